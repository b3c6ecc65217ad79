"""Tasks and architectures qdeploy can export: one registration each, looked up by name or `model_type`."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedError
from .registry import Registry


# Encoders: int8 both ways (dynamic and static), NNCF's int8 and weight-only, and bf16 where the CPU has it.
ENCODER_METHODS = ("ort-dynamic", "ort-static", "openvino-bf16", "nncf-ptq", "nncf-weight-int8")
# Language models: only recipes that keep a real one (SmolLM2-135M) within 3 LAMBADA points of fp32 and its
# next-token agreement above 0.9, measured by benchmarks/smollm2_tables.py (README, "A real language model"):
# ort-dynamic (-15 points) and static int8 (-25) collapse it, 4-bit weights lose 7 points, SmoothQuant keeps LAMBADA
# (-0.9) but agrees at 0.82 only.
DECODER_METHODS = ("weight-int8", "nncf-weight-int8", "openvino-bf16")


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str  # the transformers Auto* class that loads the model
    outputs: tuple[str, ...]
    default_metric: str  # the fidelity metric used when no evaluation file is given
    generative: bool = False  # exported with a KV cache and run token by token (see exporters/causal_lm.py)
    exporter: str = ""  # module under qdeploy.exporters that exports this task, when the generic path cannot
    # What a plan with `methods: default` (the default plan) runs for this task: plan method entries
    methods: tuple = ENCODER_METHODS


@dataclass(frozen=True)
class Architecture:
    """What the exporter must know about a family of models beyond what its task and config say. Any architecture
    transformers loads for a task is tried; the export's validation against PyTorch decides whether it works."""
    model_type: str
    inputs: tuple[str, ...] = ()  # () : the task kind's inputs (KIND_INPUTS), filtered by the model's forward()
    atol: float = 1e-4  # fp32 export vs PyTorch, max abs difference on real inputs
    opset: int = 17
    max_positions_key: str | None = None  # None: the first of MAX_POSITIONS_KEYS in config.json; "": no limit
    tasks: tuple[str, ...] = ()  # (): whatever transformers' Auto class loads it for
    kind: str = ""  # encoder, decoder or seq2seq when `inputs` is (); "" until a task says (see model_inputs)


TASKS: Registry[Task] = Registry("task")
# Only the families that need handling of their own; every other model_type gets a generic entry (`architecture`).
ARCHITECTURES: Registry[Architecture] = Registry("architecture")

for _task in (
    Task("feature-extraction", "AutoModel", ("last_hidden_state",), "cosine"),
    Task("text-classification", "AutoModelForSequenceClassification", ("logits",), "agreement"),
    Task("text-generation", "AutoModelForCausalLM", ("logits",), "token-agreement", generative=True,
         exporter="causal_lm", methods=DECODER_METHODS),
    # Not `generative`: that flag means a causal decoder (left padding, positions); seq2seq has its own exporter.
    Task("text2text-generation", "AutoModelForSeq2SeqLM", ("logits",), "seq2seq-agreement", exporter="seq2seq"),
):
    TASKS.register(_task.name)(_task)

# Decoders take explicit positions so that left-padded batches generate correctly; the exporter adds the cache.
KIND_INPUTS = {"encoder": ("input_ids", "attention_mask", "token_type_ids"),
               "decoder": ("input_ids", "attention_mask", "position_ids"),
               "seq2seq": ("input_ids", "attention_mask")}
_KINDS = {"text-generation": "decoder", "text2text-generation": "seq2seq"}  # other tasks: encoder
MAX_POSITIONS_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")

for _arch in (
    # BLOOM has no position_ids (ALiBi attends by distance): listed so that callers without the model (a run's
    # benchmark inputs) do not feed them; with the model at hand its forward() signature says the same.
    Architecture("bloom", ("input_ids", "attention_mask"), max_positions_key=""),
    # T5 positions are relative buckets: no context limit, whatever n_positions an old config.json carries.
    Architecture("t5", KIND_INPUTS["seq2seq"], max_positions_key=""),
    Architecture("mt5", KIND_INPUTS["seq2seq"], max_positions_key=""),
    Architecture("umt5", KIND_INPUTS["seq2seq"], max_positions_key=""),
):
    ARCHITECTURES.register(_arch.model_type)(_arch)


# model_types known to export to ONNX and to OpenVINO IR and to pass validation, per task: tiny random models in
# tests/test_architectures.py (which checks this list against its own), the slow sets of test_generation.py and
# test_seq2seq.py, and the real MiniLM and stories260K models. Others are tried all the same.
VERIFIED_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "feature-extraction": ("bert", "data2vec-text", "deberta", "mpnet", "xlm-roberta"),
    "text-classification": ("albert", "bert", "camembert", "convbert", "deberta-v2", "distilbert", "electra", "ernie",
                            "megatron-bert", "mobilebert", "modernbert", "roberta", "roformer", "squeezebert"),
    "text-generation": ("bloom", "codegen", "cohere", "falcon", "gemma", "gemma2", "gemma3_text", "glm", "gpt2",
                        "gpt_neo", "gpt_neox", "gptj", "granite", "helium", "llama", "mistral", "olmo", "olmo2", "opt",
                        "phi", "phi3", "qwen2", "qwen3", "smollm3", "stablelm", "starcoder2"),
    "text2text-generation": ("bart", "blenderbot", "blenderbot-small", "m2m_100", "marian", "mbart", "mt5", "pegasus",
                             "plbart", "t5", "umt5"),
}


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
    elif requested != FEATURE_EXTRACTION and config.get("architectures"):
        # A model trained with one head, asked for another task, would get that task's head freshly initialized:
        # numbers from random weights. A bare model (no head) is the user's to fit.
        try:
            inferred = infer_task(config)[0]
        except UnsupportedError:
            inferred = "a task qdeploy cannot export"
        if inferred not in (FEATURE_EXTRACTION, requested):
            head = config["architectures"][0]
            raise UnsupportedError(f"{head} was trained for {inferred}; --task {requested} would give it an untrained "
                                   f"{requested} head. Use --task {AUTO}")
    return requested, "as asked"


def architecture(model_type: str, task_name: str | None = None) -> Architecture:
    """The registered entry, or a generic one: inputs from the task's kind, checked later against forward()."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES.get(model_type)
    return Architecture(model_type, kind=_KINDS.get(task_name, "encoder") if task_name else "")


def check_task(arch: Architecture, task_name: str) -> None:
    """Refuses only what a registry entry rules out; whether transformers loads the model for the task is decided
    when it is loaded (`load_model`), so that this check stays free of heavy imports."""
    task(task_name)
    if arch.tasks and task_name not in arch.tasks:
        raise UnsupportedError(f"architecture {arch.model_type!r} does not support task {task_name}; "
                               f"it supports: {', '.join(arch.tasks)}")


def _guess_kind(model_type: str) -> str:
    """The kind of a model_type when no task was given: what transformers' Auto mappings have it for."""
    from transformers.models.auto import modeling_auto as auto

    if model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    masked = auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES  # encoders may have a causal LM head too (BertLMHeadModel)
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in masked:
        return "decoder"
    return "encoder"


def model_inputs(arch: Architecture, tokenizer, model=None) -> list[str]:
    """The architecture's inputs that this tokenizer produces (attention_mask and position_ids are made here) and,
    given the model, that its forward() names: a family without position_ids or token types drops them. Ids and mask
    stay even where forward() takes them through **kwargs only."""
    names = arch.inputs or KIND_INPUTS[arch.kind or _guess_kind(arch.model_type)]
    names = [n for n in names if n in tokenizer.model_input_names or n in ("attention_mask", "position_ids")]
    if model is not None:
        import inspect

        accepted = inspect.signature(model.forward).parameters
        names = [n for n in names if n in accepted or n in ("input_ids", "attention_mask")]
    return names


def max_positions(config: dict) -> int | None:
    """The longest input the model takes, from its config.json; None when it has no limit or does not say."""
    key = architecture(str(config.get("model_type", ""))).max_positions_key
    if key == "":
        return None
    for name in (key,) if key else MAX_POSITIONS_KEYS:
        if isinstance(config.get(name), int):
            return config[name]
    return None


def load_model(model_dir, task_name: str, trust_remote_code: bool = False, pickle: bool = False):
    """Load the PyTorch model for a task in eval mode, fp32; from safetensors unless pickle weights were allowed."""
    import transformers

    from .errors import InputError

    auto_class = task(task_name).auto_class
    auto = getattr(transformers, auto_class)
    try:
        model = auto.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code,
                                     use_safetensors=not pickle, dtype="float32")
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        model_type = _config_model_type(model_dir)
        # The Auto class is the judge of which tasks an architecture does: its refusal is an answer, not a fault.
        if first.startswith("Unrecognized configuration class"):
            raise UnsupportedError(f"architecture {model_type!r} does not support task {task_name}: transformers "
                                   f"{transformers.__version__} has no {auto_class} for it") from None
        if "does not recognize this architecture" in first:
            raise UnsupportedError(f"architecture {model_type!r} is unknown to transformers "
                                   f"{transformers.__version__}; a newer release may know it") from None
        raise InputError(f"cannot load the model in {model_dir}: {first}") from None
    return model.eval()


def _config_model_type(model_dir) -> str:
    import json
    from pathlib import Path

    try:
        return str(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("model_type"))
    except (OSError, ValueError):
        return "unknown"


def for_generation(tokenizer):
    """Left padding (every row's next token in the last column) and a pad token (many causal LMs have none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer
