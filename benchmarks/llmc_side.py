"""Prune a Hugging Face Llama with llm-compressor's SparseGPT or Wanda, for numbers to set
beside sensiprune's: wall time and peak RSS of the prune, perplexity and achieved sparsity.

It runs in its own virtual environment, not the project's: llmcompressor 0.14.0.1 pins
torch>=2.10,<=2.14.0, transformers>=5.15,<=5.17 and compressed-tensors==0.19.0 (the main
.venv has transformers 5.24), and a bare torch requirement would pull a CUDA build. Set it
up with the CPU torch first, then llmcompressor without its dependencies (they include
nvidia-ml-py, left out), then those dependencies with torch held where it is (``make llmc``
does this):

    python3.11 -m venv .venv-llmc
    .venv-llmc/bin/pip install torch==2.13.0
    .venv-llmc/bin/pip install --no-deps llmcompressor==0.14.0.1
    .venv-llmc/bin/pip install torch==2.13.0 "transformers>=5.15,<=5.17" \
        compressed-tensors==0.19.0 "auto-round>=0.14.1,<=0.15.1" "accelerate>=1.15" \
        "datasets>=4.8.4" loguru pyyaml numpy requests tqdm pillow

Invoke with a model saved by ``save_pretrained`` in DIR and a ``torch.save``d dict
{"calibration": LongTensor [n, seq], "evaluation": LongTensor [m, seq]} in FILE:

    .venv-llmc/bin/python benchmarks/llmc_side.py --model DIR --data FILE --out FILE.json \
        --scheme {unstructured,2:4} --method {sparsegpt,wanda}

Fix the thread count (OMP_NUM_THREADS) to the one sensiprune's side runs with: on a busy
2-core machine the prune of a tiny Llama took 0.6 s with one thread and 5 to 40 s with two.
"""

# ruff: noqa: E402  (the environment and import path are set before the libraries load)
import argparse
import json
import os
import time

from common import block_sparsity, leave_benchmarks_folder, peak_rss_bytes, perplexity

leave_benchmarks_folder()  # benchmarks/transformers.py would stand in for the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported

import compressed_tensors
import llmcompressor
import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

MODIFIERS = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}
MASKS = {"unstructured": "0:0", "2:4": "2:4"}
# Each decoder layer, as in llm-compressor's own Llama examples: every Linear inside it is
# pruned (q/k/v/o and gate/up/down projections); embeddings and lm_head lie outside.
TARGETS = [r"re:model\.layers\.\d+$"]
IGNORE = ["re:.*lm_head"]


def placeholder_tokenizer() -> PreTrainedTokenizerFast:
    """oneshot demands a processor whenever a dataset is given (pre_process in
    llmcompressor/entrypoints/utils.py) but uses it only to tokenize text, and our data are
    token ids already, so a one-word tokenizer stands in for the model's."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, "<unk>")))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--model", required=True, help="directory saved with save_pretrained")
    cli.add_argument("--data", required=True, help="torch.save'd calibration/evaluation ids")
    cli.add_argument("--out", required=True, help="JSON file to write")
    cli.add_argument("--scheme", choices=sorted(MASKS), default="unstructured")
    cli.add_argument("--method", choices=sorted(MODIFIERS), default="sparsegpt")
    cli.add_argument("--sparsity", type=float, default=0.5)
    args = cli.parse_args()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    data = torch.load(args.data)
    calib, evaluation = data["calibration"], data["evaluation"]
    dataset = Dataset.from_dict(
        {"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()}
    )
    modifier = MODIFIERS[args.method](
        sparsity=args.sparsity, mask_structure=MASKS[args.scheme], targets=TARGETS, ignore=IGNORE
    )

    rss_before_mib = peak_rss_bytes() / 2**20
    start = time.perf_counter()
    oneshot(
        model=model,
        processor=placeholder_tokenizer(),
        dataset=dataset,
        recipe=modifier,
        num_calibration_samples=calib.shape[0],
        max_seq_length=calib.shape[1],
        shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - start
    peak_rss_mib = peak_rss_bytes() / 2**20

    result = {
        "method": args.method,
        "scheme": args.scheme,
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib,  # through the prune; evaluation comes after
        "rss_before_mib": rss_before_mib,  # imports and the loaded model, before oneshot
        "threads": torch.get_num_threads(),
        "perplexity": perplexity(model.eval(), evaluation),
        "sparsity": block_sparsity(model),
        "llmcompressor_version": llmcompressor.__version__,
        "compressed_tensors_version": compressed_tensors.__version__,
        "torch_version": torch.__version__,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
