"""Tasks and architectures qdeploy can export: one registration each, looked up by name or `model_type`."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedError
from .registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str  # the transformers Auto* class that loads the model
    outputs: tuple[str, ...]
    default_metric: str  # the fidelity metric used when no evaluation file is given
    generative: bool = False  # exported with a KV cache and run token by token (see exporters/causal_lm.py)
    exporter: str = ""  # module under qdeploy.exporters that exports this task, when the generic path cannot


@dataclass(frozen=True)
class Architecture:
    """What the exporter needs to know about a family of models (inputs, tolerance)."""
    model_type: str
    inputs: tuple[str, ...]
    atol: float = 1e-4  # fp32 export vs PyTorch, max abs difference on real inputs
    opset: int = 17
    max_positions_key: str = "max_position_embeddings"
    tasks: tuple[str, ...] = ("feature-extraction", "text-classification")


TASKS: Registry[Task] = Registry("task")
ARCHITECTURES: Registry[Architecture] = Registry("architecture")

for _task in (
    Task("feature-extraction", "AutoModel", ("last_hidden_state",), "cosine"),
    Task("text-classification", "AutoModelForSequenceClassification", ("logits",), "agreement"),
    Task("text-generation", "AutoModelForCausalLM", ("logits",), "token-agreement", generative=True,
         exporter="causal_lm"),
    # Not `generative`: that flag means a causal decoder (left padding, positions); seq2seq has its own exporter.
    Task("text2text-generation", "AutoModelForSeq2SeqLM", ("logits",), "seq2seq-agreement", exporter="seq2seq"),
):
    TASKS.register(_task.name)(_task)

_BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_TYPE_INPUTS = ("input_ids", "attention_mask")
for _arch in (
    Architecture("bert", _BERT_INPUTS),
    Architecture("electra", _BERT_INPUTS),
    Architecture("albert", _BERT_INPUTS),
    Architecture("mpnet", _NO_TYPE_INPUTS),
    Architecture("roberta", _NO_TYPE_INPUTS),
    Architecture("xlm-roberta", _NO_TYPE_INPUTS),
    Architecture("distilbert", _NO_TYPE_INPUTS),
):
    ARCHITECTURES.register(_arch.model_type)(_arch)

# Decoders: the exporter adds the cache inputs (past_key_values.N.key/value) to these. BLOOM has no position_ids
# (ALiBi attends by distance); the others take explicit positions so that left-padded batches generate correctly.
_DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
for _arch in (
    Architecture("llama", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("mistral", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("qwen2", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("phi", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("gpt2", _DECODER_INPUTS, tasks=("text-generation",), max_positions_key="n_positions"),
    Architecture("opt", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("gpt_neox", _DECODER_INPUTS, tasks=("text-generation",)),
    Architecture("bloom", ("input_ids", "attention_mask"), tasks=("text-generation",), max_positions_key=""),
):
    ARCHITECTURES.register(_arch.model_type)(_arch)

# Encoder-decoders: the exporter writes an encoder and a decoder graph with the self-attention cache
# (exporters/seq2seq.py); the inputs are the encoder's.
for _arch in (
    Architecture("bart", _NO_TYPE_INPUTS, tasks=("text2text-generation",)),
    Architecture("mbart", _NO_TYPE_INPUTS, tasks=("text2text-generation",)),
    Architecture("marian", _NO_TYPE_INPUTS, tasks=("text2text-generation",)),
    Architecture("m2m_100", _NO_TYPE_INPUTS, tasks=("text2text-generation",)),
    Architecture("t5", _NO_TYPE_INPUTS, tasks=("text2text-generation",), max_positions_key=""),
):
    ARCHITECTURES.register(_arch.model_type)(_arch)


def task(name: str) -> Task:
    return TASKS.get(name)


AUTO = "auto"  # the task the model's own config names (its `architectures`), see infer_task
FEATURE_EXTRACTION = "feature-extraction"
# The head a class name ends with -> the task that keeps it; None: a head qdeploy cannot export yet. First match wins.
_HEADS: tuple[tuple[str, str | None], ...] = (
    ("ForSequenceClassification", "text-classification"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),  # GPT-2, GPT-J: the causal LM head under its older name
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSeq2SeqLM", "text2text-generation"),
    ("ForTokenClassification", None),
    ("ForQuestionAnswering", None),
    ("ForMaskedLM", None),
    ("ForMultipleChoice", None),
)


def infer_task(config: dict) -> tuple[str, str]:
    """(task, why) from a model's config.json: its first `architectures` class names the head it was trained with;
    a bare encoder (BertModel) or a config without architectures is feature extraction."""
    classes = [c for c in config.get("architectures") or [] if isinstance(c, str)]
    for cls in classes:
        for suffix, name in _HEADS:
            if cls.endswith(suffix):
                if name is None:
                    raise UnsupportedError(f"{cls} has a {suffix[3:]} head, which qdeploy cannot export yet; "
                                           f"--task {FEATURE_EXTRACTION} --drop-head exports its encoder without it")
                if name == "text2text-generation" and not config.get("is_encoder_decoder", True):
                    continue  # a decoder-only "conditional generation" class (some multimodal ones): not seq2seq
                return name, f"from {cls} in config.json"
    why = f"from {classes[0]} (no task head)" if classes else "config.json names no architectures"
    return FEATURE_EXTRACTION, why


def resolve_task(requested: str | None, config: dict, drop_head: bool = False) -> tuple[str, str]:
    """The task to use and why. `auto` (or nothing) infers it; feature extraction of a model that has a head is
    refused unless `drop_head` says it is meant, because the head would be silently lost."""
    if requested in (None, AUTO):
        return infer_task(config)
    task(requested)  # an unknown task name fails here, with the list
    if requested == FEATURE_EXTRACTION and not drop_head:
        try:
            inferred = infer_task(config)[0]
        except UnsupportedError:
            inferred = "a task qdeploy cannot export"
        if inferred != FEATURE_EXTRACTION:
            head = (config.get("architectures") or ["the model"])[0]
            raise UnsupportedError(f"{head} has a head for {inferred}; --task {FEATURE_EXTRACTION} would drop it. "
                                   f"Use --task {AUTO}, or add --drop-head to export the bare encoder on purpose")
    return requested, "as asked"


def architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise UnsupportedError(
            f"architecture {model_type!r} is not supported yet; supported: {', '.join(ARCHITECTURES.names())}"
        )
    return ARCHITECTURES.get(model_type)


def check_task(arch: Architecture, task_name: str) -> None:
    if task_name not in arch.tasks:
        raise UnsupportedError(f"architecture {arch.model_type!r} does not support task {task_name}; "
                               f"it supports: {', '.join(arch.tasks)}")


def model_inputs(arch: Architecture, tokenizer) -> list[str]:
    """The architecture's inputs that this tokenizer produces (attention_mask always)."""
    return [n for n in arch.inputs if n in tokenizer.model_input_names or n in ("attention_mask", "position_ids")]


def load_model(model_dir, task_name: str, trust_remote_code: bool = False, pickle: bool = False):
    """Load the PyTorch model for a task in eval mode, fp32; from safetensors unless pickle weights were allowed."""
    import transformers

    from .errors import InputError

    auto = getattr(transformers, task(task_name).auto_class)
    try:
        model = auto.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code,
                                     use_safetensors=not pickle, dtype="float32")
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load the model in {model_dir}: {first}") from None
    return model.eval()


def for_generation(tokenizer):
    """Left padding (every row's next token in the last column) and a pad token (many causal LMs have none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer
