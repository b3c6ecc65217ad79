"""The default plan on all-MiniLM-L6-v2 with long measurements and STS-benchmark Spearman."""
from _common import SHARED, run

if __name__ == "__main__":
    run({"eval": {"stsb": str(SHARED / "data" / "stsb" / "sts-test.tsv")}}, "runs/bench-default")
