"""Every variant of the real SST-2 classifier, with accuracy on the full GLUE SST-2 dev set (872 rows)."""
from _common import SHARED, run

if __name__ == "__main__":
    run({"model": str(SHARED / "models" / "minilm-l6-sst2"), "task": "text-classification",
         "eval": {"accuracy": str(SHARED / "data" / "sst2" / "dev.tsv")}}, "runs/bench-sst2")
