"""A language-model run holds what it needs, not what the vocabulary multiplies: a random decoder with a 262,144-token
vocabulary (Gemma 3's), weight-int8 on three runtimes, must stay under 2 GB plus 4x its fp32 size (issue: such a
run on a 270M model grew to 24 GB: every logit of a batch in float64, every session held at once)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from .conftest import STORIES

VOCABULARY = 262_144


def _tree_rss(process) -> int:
    import psutil

    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _wide_vocabulary_decoder(target):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCABULARY, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(target)
    # The tokenizer is stories260K's (512 ids): what is fed stays in range; the logits are 262,144 wide.
    transformers.AutoTokenizer.from_pretrained(str(STORIES)).save_pretrained(target)
    return sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured 4.8 GB against 2.5 GB (AMD EPYC Zen 2, 2026-12-05): the exported graphs give logits for every position, "
    "1 GB per batch-8 prompt of 128 tokens at this vocabulary, which each ONNX Runtime and OpenVINO session keeps "
    "in its buffers while loaded; the graph needs a last-position output for decoding"))
def test_a_wide_vocabulary_run_on_three_runtimes_stays_within_two_gb_plus_four_times_the_model(tmp_path):
    import psutil

    fp32_bytes = _wide_vocabulary_decoder(tmp_path / "model")
    bound = 2 * 2**30 + 4 * fp32_bytes
    command = [sys.executable, "-m", "qdeploy", "run", "--model", str(tmp_path / "model"), "--task",
               "text-generation", "--methods", "weight-int8", "--runtimes", "torch,ort-cpu,openvino-cpu",
               "--batch-sizes", "1,8", "--min-time-s", "0.2", "--min-reps", "3", "--new-tokens", "8",
               "--out", str(tmp_path / "run")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak, done = psutil.Process(child.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(watched))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    assert child.returncode == 0, err[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    measured = {(r["variant"], r["runtime"]) for r in report["results"]}
    assert {("weight-int8", "ort-cpu"), ("pytorch-fp32", "torch")} <= measured, measured
    assert any(runtime == "openvino-cpu" for _, runtime in measured), measured
    assert peak[0] <= bound, (f"peak {peak[0] / 2**30:.2f} GB above {bound / 2**30:.2f} GB "
                              f"(fp32 model {fp32_bytes / 2**20:.0f} MB)")
