"""The embedded models: tiny MoE language models trained here, on the calibration splits only.

Three families, one build (`Recipe.family` picks the transformers class; EMBEDDED_MODELS names them):
- `embedded` (the default): OlmoeForCausalLM, softmax top-2 of 16 experts, not renormalised;
- `embedded-qwen`: Qwen3MoeForCausalLM, softmax top-4 of 16 finer experts (intermediate 64: the same active expert
  width), renormalised, with per-head q/k norm — the router and expert grain of the Qwen3-MoE line;
- `embedded-mixtral`: MixtralForCausalLM, softmax top-2 of 16, renormalised (w1/w2/w3 experts), no q/k norm.

`ladder model build [NAME] [--force] [--seed N]` (and `ensure_embedded_model()` on first use, under a file lock so
concurrent xdist workers build once) trains, deterministically from the seed:
- a byte-level BPE tokenizer (tokenizers library) on the code, math and text calibration documents;
- the family's model (RECIPE, OLMoE: 8 layers, hidden 128, 16 experts, top-2, expert intermediate 128, vocab 2048)
  on those documents, each preceded by <|endoftext|>, packed into 128-token rows, two rows per task in every step
  (420 steps), with the family's load-balancing loss so the experts are used;
and saves both with save_pretrained into <cache>/models/<family folder>-<key> (olmoe-tiny-, qwen3-moe-tiny-,
mixtral-tiny-; cache: $LADDER_CACHE_DIR, default ~/.cache/pytest-ladder), key = sha256 of the recipe, the seed and
the corpus files' SHA-256 (the OLMoE recipe's record leaves the family out, so its key predates the families).
Determinism: fixed seed, torch.use_deterministic_algorithms, a fixed thread count, a seeded data order. Every
CHECKPOINT_EVERY steps the training state goes to `.<folder>.checkpoint`; a build interrupted (killed, Ctrl-C)
resumes from there with the same final weights.

Threads: the count stays `Recipe.threads` whatever the machine, because on the CPU the weights depend on it (1 and
2 threads train to different bits; the OpenMP wait policy does not change them). What a busy machine costs instead
is bounded by a passive wait policy: with OMP_WAIT_POLICY=PASSIVE a thread waiting for its partner sleeps instead of
spinning on a core another process needs (10 training steps next to one busy process: 45 s with spinning threads,
6 s passive). The price is paid on a quiet machine, where sleeping threads wake late: benchmarks/thread_wait.py
measured 0.36 s per step passive against 0.14–0.20 s spinning when quiet, and 0.29–0.30 s against 0.56–0.72 s
beside one busy process; the ladder takes the policy that keeps a shared machine usable. A user who knows the
machine is theirs sets OMP_WAIT_POLICY=ACTIVE (or anything) first and it is left alone. OpenMP reads the policy
when torch loads, so `ladder model build` and the plugin's session preparation (pytest_ladder.prepare) set it,
unless already set, before they import torch; a build in a process that loaded torch earlier with spinning threads
says so.

The build shows a progress bar and its checkpoints on the terminal, inside pytest too (pytest_ladder.progress), and
prints (and stores in build_report.json) the held-out NLL per task against a unigram baseline and, per layer, the
Jensen-Shannon divergence between the tasks' expert-usage histograms: the routing has task structure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterator

from pytest_ladder.progress import bar, say

EMBEDDED_FORMAT = 1  # bump when the build procedure changes the weights
CACHE_ENV = "LADDER_CACHE_DIR"
BOS = "<|endoftext|>"
PAD = "<|padding|>"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the embedded model's weights, apart from the seed and the data."""

    family: str = "olmoe"  # a key of FAMILIES: the transformers class and its config
    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_experts: int = 16
    num_experts_per_tok: int = 2
    intermediate_size: int = 128
    seq_len: int = 128
    steps: int = 420
    rows_per_task: int = 2  # rows of seq_len tokens per task in every step (small batches: more steps per token)
    lr: float = 6e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.1
    router_aux_loss_coef: float = 0.01
    threads: int = 2  # fixed for determinism: the weights depend on it (see the module doc on busy machines)
    tasks: tuple[str, ...] = ("code", "math", "text")
    eval_documents: int = 48  # held-out documents per task for the NLL report
    eval_tokens: int = 4096  # held-out tokens per task for the routing report

    def __post_init__(self) -> None:
        family_of(self)  # an unknown family is refused here, naming the known ones

    def record(self) -> dict:
        """The recipe as keyed and reported: every field, the family left out for OLMoE (the first family, whose
        key and cache folder predate the field)."""
        fields = asdict(self)
        if self.family == "olmoe":
            del fields["family"]
        return fields

    def common_config(self) -> dict:
        """Config fields every family takes alike."""
        return {
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads, "num_experts_per_tok": self.num_experts_per_tok,
            "max_position_embeddings": self.seq_len, "router_aux_loss_coef": self.router_aux_loss_coef,
            "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1,
        }

    def olmoe_config(self) -> dict:
        return {**self.common_config(), "intermediate_size": self.intermediate_size, "num_experts": self.num_experts,
                "norm_topk_prob": False}

    def qwen3_moe_config(self) -> dict:
        """Every layer MoE (decoder_sparse_step 1, no mlp_only_layers); head_dim hidden/heads; top-k renormalised."""
        return {**self.common_config(), "moe_intermediate_size": self.intermediate_size,
                "intermediate_size": self.intermediate_size, "num_experts": self.num_experts,
                "head_dim": self.hidden_size // self.num_attention_heads, "norm_topk_prob": True,
                "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False}

    def mixtral_config(self) -> dict:
        """Full attention (no sliding window), no router jitter; Mixtral always renormalises its top-k."""
        return {**self.common_config(), "intermediate_size": self.intermediate_size,
                "num_local_experts": self.num_experts, "head_dim": self.hidden_size // self.num_attention_heads,
                "sliding_window": None, "router_jitter_noise": 0.0}

    def model_config(self) -> Any:
        """The transformers config of this recipe's family."""
        import transformers

        family = family_of(self)
        return getattr(transformers, family.config_class)(**getattr(self, family.config_method)())


@dataclass(frozen=True)
class Family:
    """One MoE family the embedded build can train: its transformers classes and cache folder prefix."""

    title: str  # in the build report: "embedded <title>"
    config_class: str
    model_class: str
    config_method: str  # the Recipe method giving its config fields
    folder: str  # cache folder prefix: <folder>-<key>


FAMILIES: dict[str, Family] = {
    "olmoe": Family("OLMoE", "OlmoeConfig", "OlmoeForCausalLM", "olmoe_config", "olmoe-tiny"),
    "qwen3_moe": Family("Qwen3-MoE", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3_moe_config",
                        "qwen3-moe-tiny"),
    "mixtral": Family("Mixtral", "MixtralConfig", "MixtralForCausalLM", "mixtral_config", "mixtral-tiny"),
}


def family_of(recipe: Recipe) -> Family:
    """The Family of `recipe` (ValueError naming the known families for any other)."""
    try:
        return FAMILIES[recipe.family]
    except KeyError:
        raise ValueError(f"Recipe.family {recipe.family!r} is not one of {', '.join(FAMILIES)}") from None


RECIPE = Recipe()
QWEN_RECIPE = Recipe(family="qwen3_moe", num_experts_per_tok=4, intermediate_size=64)
MIXTRAL_RECIPE = Recipe(family="mixtral")
DEFAULT_MODEL = "embedded"
EMBEDDED_MODELS: dict[str, Recipe] = {DEFAULT_MODEL: RECIPE, "embedded-qwen": QWEN_RECIPE,
                                      "embedded-mixtral": MIXTRAL_RECIPE}


def recipe_named(name: str) -> Recipe:
    """The recipe of embedded model `name` (a key of EMBEDDED_MODELS); ValueError lists the names."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ValueError(f"no embedded model {name!r}; the embedded models are {', '.join(EMBEDDED_MODELS)}") from None


@dataclass
class BuildReport:
    """What a build measured (stored as build_report.json beside the weights)."""

    key: str
    seed: int
    recipe: dict
    seconds: dict = field(default_factory=dict)
    peak_rss_bytes: int = 0
    n_params: int = 0
    train_tokens: int = 0
    final_train_loss: float = 0.0
    heldout_nll: dict = field(default_factory=dict)
    expert_usage: dict = field(default_factory=dict)
    expert_usage_js_bits: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- the cache ---


def cache_root() -> Path:
    """$LADDER_CACHE_DIR, else ~/.cache/pytest-ladder."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pytest-ladder").expanduser()


def model_key(recipe: Recipe = RECIPE, seed: int = 0) -> str:
    """sha256 (16 hex) of the build format, recipe, seed and the SHA-256 of the corpus files it trains on."""
    from pytest_ladder.models.corpora import source_fingerprint

    payload = {"format": EMBEDDED_FORMAT, "recipe": recipe.record(), "seed": seed,
               "data": source_fingerprint(recipe.tasks)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def embedded_model_dir(recipe: Recipe = RECIPE, seed: int = 0) -> Path:
    return cache_root() / "models" / f"{family_of(recipe).folder}-{model_key(recipe, seed)}"


def ensure_embedded_model(seed: int = 0, force: bool = False, recipe: Recipe = RECIPE,
                          log: Callable[[str], None] | None = None, checkpoint_every: int | None = None) -> Path:
    """The embedded model's folder, built first if missing (or `force`), under a file lock: concurrent processes
    (xdist workers) wait for one build, saying who holds it. The folder appears atomically (built aside, renamed).
    An interrupted build resumes from its last checkpoint (every `checkpoint_every` steps, default
    CHECKPOINT_EVERY); `force` starts from step 0."""
    folder = embedded_model_dir(recipe, seed)
    if (folder / "build_report.json").is_file() and not force:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = log or say
    with build_lock(folder, log=log):
        if (folder / "build_report.json").is_file() and not force:
            return folder
        staging = folder.parent / f".{folder.name}.building-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        checkpoint = checkpoint_path(folder)
        if force:
            checkpoint.unlink(missing_ok=True)
        if not checkpoint.is_file():  # a resumed build says so itself
            log(f"building the embedded {family_of(recipe).title} model (once; a few minutes on 2 CPU cores) into "
                f"{folder}")
        build_embedded_model(staging, recipe=recipe, seed=seed, log=log, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every or CHECKPOINT_EVERY)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        checkpoint.unlink(missing_ok=True)
    return folder


def checkpoint_path(folder: Path) -> Path:
    """Where an interrupted build of `folder` left its training state: `.<name>.checkpoint` beside it."""
    return folder.parent / f".{folder.name}.checkpoint"


LOCK_TIMEOUT_S = 1800.0
LOCK_NOTICE_S = 60.0  # a waiter says who holds the build lock at least this often


@contextlib.contextmanager
def build_lock(folder: Path, *, log: Callable[[str], None] | None = None, timeout: float = LOCK_TIMEOUT_S,
               notice_every: float = LOCK_NOTICE_S) -> Iterator[None]:
    """Hold `<folder>.lock` while building `folder`. The holder writes its pid, host and start time beside the lock
    (`<folder>.lock.holder`, removed on release); a waiter logs "waiting for the build of <folder> held by pid N on
    HOST since TIME" when it starts waiting and every `notice_every` seconds. The OS frees the lock of a dead holder."""
    from filelock import FileLock, Timeout

    log = log or say
    lock = FileLock(str(folder) + ".lock")
    holder = Path(str(folder) + ".lock.holder")
    deadline = time.monotonic() + timeout
    wait = 0.0
    while True:
        try:
            lock.acquire(timeout=wait)
            break
        except Timeout:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"waited {f'{timeout / 60:g} minutes' if timeout >= 60 else f'{timeout:g} seconds'} for the build "
                    f"of {folder} ({_holder_text(holder)}; lock "
                    f"{lock.lock_file}); if no build is running, delete the lock file and retry"
                ) from None
            log(f"waiting for the build of {folder} {_holder_text(holder)}")
            wait = min(notice_every, left)
    try:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}) + "\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder_text(holder: Path) -> str:
    """ "held by pid N on HOST since TIME", from the holder's note (or what is known when it cannot be read)."""
    try:
        note = json.loads(holder.read_text())
        return f"held by pid {note['pid']} on {note['host']} since {note['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "held by another process (it has not yet said which)"


PASSIVE_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")


def passive_threads() -> None:
    """Let waiting OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE, unless set) so a busy machine slows the build in
    proportion; effective only before torch loads (see the module doc)."""
    if "torch" not in sys.modules:
        os.environ.setdefault(*PASSIVE_WAIT)


def _spinning_threads() -> bool:
    """Did torch load with OpenMP threads that spin while waiting (the default policy)?"""
    return os.environ.get(PASSIVE_WAIT[0], "").upper() != PASSIVE_WAIT[1]


# ------------------------------------------------------------------------------------------------ the build ---


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """Byte-level BPE (tokenizers) over `texts` (deterministic given the texts), wrapped for transformers:
    <|endoftext|> (id 0) is BOS and EOS, <|padding|> (id 1) pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=BOS, pad_token=PAD,
                                   model_max_length=max_length)


def _rows(documents: list[list[int]], bos: int, seq_len: int, generator: Any) -> Any:
    """Documents in a seeded order, each preceded by BOS, concatenated and cut into rows of seq_len tokens."""
    import torch

    order = torch.randperm(len(documents), generator=generator).tolist()
    stream = [token for i in order for token in (bos, *documents[i])]
    n_rows = len(stream) // seq_len
    return torch.tensor(stream[:n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)


class _TaskStream:
    """Endless rows of one task: a seeded permutation of its rows per epoch."""

    def __init__(self, rows: Any, generator: Any) -> None:
        self.rows, self.generator, self.order, self.position = rows, generator, [], 0

    def take(self, n: int) -> Any:
        import torch

        picked = []
        while len(picked) < n:
            if self.position >= len(self.order):
                self.order = torch.randperm(len(self.rows), generator=self.generator).tolist()
                self.position = 0
            picked.append(self.order[self.position])
            self.position += 1
        return self.rows[picked]


def _lr(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def js_divergence_bits(p: Any, q: Any) -> float:
    """Jensen-Shannon divergence in bits, JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q); 0 (same) .. 1 (disjoint)."""
    import torch

    p, q = p.double() / p.sum(), q.double() / q.sum()
    m = 0.5 * (p + q)

    def kl(a: Any) -> Any:
        nonzero = a > 0
        return (a[nonzero] * torch.log2(a[nonzero] / m[nonzero])).sum()

    return float(0.5 * kl(p) + 0.5 * kl(q))


CHECKPOINT_EVERY = 60  # training steps between checkpoints (a resumed build repeats at most this many)


def build_embedded_model(out_dir: Path, recipe: Recipe = RECIPE, seed: int = 0,
                         log: Callable[[str], None] = say, checkpoint: Path | None = None,
                         checkpoint_every: int = CHECKPOINT_EVERY) -> BuildReport:
    """Train tokenizer and model into `out_dir` (save_pretrained) and write build_report.json; see module doc.

    With `checkpoint`, the training state (weights, optimizer, data order, step) is saved there every
    `checkpoint_every` steps, and a build that finds a checkpoint of the same model key there resumes from it:
    the resumed build's weights are bit-identical to an uninterrupted one's (the tokenizer is retrained, which is
    deterministic). The caller removes the checkpoint once the model is in place."""
    import torch
    import transformers

    from pytest_ladder.models.adapters import adapter_for
    from pytest_ladder.models.capture import CaptureSpec, capture
    from pytest_ladder.models.corpora import load_corpora, token_sequences
    from pytest_ladder.models.nll import rolling_nll

    started = time.perf_counter()
    family = family_of(recipe)
    report = BuildReport(key=model_key(recipe, seed), seed=seed, recipe=recipe.record())
    saved_threads = torch.get_num_threads()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    if recipe.threads > 1 and _spinning_threads():
        log(f"note: torch's {recipe.threads} threads spin while they wait (OMP_WAIT_POLICY is not PASSIVE): on a busy "
            "machine this build slows down far more than in proportion; `ladder model build` sets it")
    try:
        corpora = load_corpora(recipe.tasks)
        calibration = {task: corpora[task].texts("calibration") for task in recipe.tasks}
        tokenizer = train_tokenizer([t for task in recipe.tasks for t in calibration[task]], recipe.vocab_size,
                                    recipe.seq_len)
        bos = tokenizer.bos_token_id
        encoded = {task: tokenizer(texts, add_special_tokens=False)["input_ids"] for task, texts in calibration.items()}
        report.seconds["data_and_tokenizer"] = round(time.perf_counter() - started, 2)

        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        streams = {task: _TaskStream(_rows(docs, bos, recipe.seq_len, generator), generator)
                   for task, docs in encoded.items()}
        model = getattr(transformers, family.model_class)(recipe.model_config())
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                      weight_decay=recipe.weight_decay)
        train_started = time.perf_counter()
        losses: list[float] = []
        first = _resume(checkpoint, report.key, model, optimizer, generator, streams, losses, log)
        steps = bar(range(first, recipe.steps), desc=f"train embedded {family.title}", initial=first,
                    total=recipe.steps)
        for step in steps:
            batch = torch.cat([streams[task].take(recipe.rows_per_task) for task in recipe.tasks])
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, recipe)
            out = model(input_ids=batch, labels=batch, output_router_logits=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            steps.set_postfix(loss=f"{losses[-1]:.3f}")
            done = step + 1
            if checkpoint is not None and done % checkpoint_every == 0 and done < recipe.steps:
                _save_checkpoint(checkpoint, report.key, done, model, optimizer, generator, streams, losses)
                log(f"checkpoint: step {done} of {recipe.steps} saved to {checkpoint}")
        report.seconds["train"] = round(time.perf_counter() - train_started, 2)
        report.train_tokens = recipe.steps * len(recipe.tasks) * recipe.rows_per_task * recipe.seq_len
        report.final_train_loss = sum(losses[-10:]) / len(losses[-10:])
        report.n_params = sum(p.numel() for p in model.parameters())
        model.eval()

        eval_started = time.perf_counter()
        _evaluate(model, tokenizer, corpora, encoded, recipe, report, rolling_nll, capture, CaptureSpec,
                  token_sequences, adapter_for)
        report.seconds["evaluate"] = round(time.perf_counter() - eval_started, 2)

        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        report.seconds["total"] = round(time.perf_counter() - started, 2)
        report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        (out_dir / "build_report.json").write_text(json.dumps(asdict(report), indent=1, sort_keys=True))
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic)
    for line in format_report(report).splitlines():
        log(line)
    return report


def _save_checkpoint(path: Path, key: str, step: int, model: Any, optimizer: Any, generator: Any,
                     streams: dict, losses: list[float]) -> None:
    """The training state after `step` steps, written aside and renamed (a kill leaves the previous one whole)."""
    import torch

    state = {"key": key, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "generator": generator.get_state(), "losses": list(losses),
             "streams": {task: {"order": stream.order, "position": stream.position}
                         for task, stream in streams.items()}}
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    torch.save(state, partial)
    os.replace(partial, path)


def _resume(path: Path | None, key: str, model: Any, optimizer: Any, generator: Any, streams: dict,
            losses: list[float], log: Callable[[str], None]) -> int:
    """Restore the training state from `path` if it holds one of this model key; the step to continue from."""
    import torch

    if path is None or not path.is_file():
        return 0
    try:  # read and check everything before changing anything: a bad checkpoint costs a rebuild, never a wrong model
        state = torch.load(path, weights_only=True)
        if state.get("key") != key:
            log(f"checkpoint {path} belongs to another build (key {state.get('key')}); starting from step 0")
            return 0
        if set(state["model"]) != set(model.state_dict()) or set(state["streams"]) != set(streams):
            raise ValueError("its parameters or tasks differ from this build's")
    except Exception as error:
        log(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); starting from step 0")
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    for task, stream in streams.items():
        stream.order, stream.position = list(state["streams"][task]["order"]), state["streams"][task]["position"]
    losses[:] = state["losses"]
    log(f"resuming the build from its checkpoint at step {state['step']} ({path})")
    return int(state["step"])


def _evaluate(model: Any, tokenizer: Any, corpora: dict, encoded: dict, recipe: Recipe, report: BuildReport,
              rolling_nll: Any, capture: Any, CaptureSpec: Any, token_sequences: Any, adapter_for: Any) -> None:
    """Held-out NLL vs a unigram baseline, and per-layer expert usage per task with pairwise JS divergence."""
    import torch

    every = torch.tensor([t for docs in encoded.values() for ids in docs for t in ids], dtype=torch.long)
    counts = 1.0 + torch.bincount(every, minlength=recipe.vocab_size).double()  # add-one unigram, calibration
    log_unigram = torch.log(counts / counts.sum())
    adapter = adapter_for(model)
    bos = tokenizer.bos_token_id
    usage: dict[str, list[list[float]]] = {}
    for task in recipe.tasks:
        texts = corpora[task].texts("heldout")[:recipe.eval_documents]
        result = rolling_nll(model, tokenizer, texts, batch_size=8, desc=f"nll {task}")
        ids = torch.tensor([t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]])
        report.heldout_nll[task] = {"nats_per_token": result.nats_per_token, "tokens": result.tokens,
                                    "documents": result.documents,
                                    "unigram_nats_per_token": float(-log_unigram[ids].mean())}
        sequences = token_sequences(corpora[task].heldout, tokenizer, recipe.eval_tokens, recipe.seq_len, bos)
        captured = capture(model, adapter, sequences, CaptureSpec(gram=False, topk=False), batch_size=8,
                           pad_token_id=tokenizer.pad_token_id, desc=f"routing {task}")
        usage[task] = [captured[layer].expert_usage().tolist() for layer in adapter.moe_layers()]
    report.expert_usage = usage
    for a, b in combinations(recipe.tasks, 2):
        report.expert_usage_js_bits[f"{a}|{b}"] = [
            js_divergence_bits(torch.tensor(pa), torch.tensor(pb)) for pa, pb in zip(usage[a], usage[b])
        ]


def format_report(report: BuildReport) -> str:
    """The build summary: size, time, memory, held-out NLL vs unigram, per-layer JS divergence of expert usage."""
    recipe = report.recipe
    lines = [
        f"embedded {FAMILIES[recipe.get('family', 'olmoe')].title} {report.key} (seed {report.seed}): "
        f"{recipe['num_hidden_layers']} layers, hidden "
        f"{recipe['hidden_size']}, {recipe['num_experts']} experts top-{recipe['num_experts_per_tok']}, expert "
        f"intermediate {recipe['intermediate_size']}, vocab {recipe['vocab_size']}, {report.n_params / 1e6:.2f}M "
        "parameters",
        f"trained {recipe['steps']} steps on {report.train_tokens / 1e6:.2f}M calibration tokens "
        f"(final loss {report.final_train_loss:.3f}); time {report.seconds.get('total', 0):.1f} s "
        f"(train {report.seconds.get('train', 0):.1f} s), peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB, "
        f"{recipe['threads']} threads",
        "held-out NLL, nats/token (unigram baseline):  " + ", ".join(
            f"{task} {v['nats_per_token']:.3f} ({v['unigram_nats_per_token']:.3f})"
            for task, v in report.heldout_nll.items()),
        "expert-usage Jensen-Shannon divergence between tasks, bits (0 same .. 1 disjoint):",
    ]
    pairs = list(report.expert_usage_js_bits)
    lines.append("  layer  " + "  ".join(f"{p:>10}" for p in pairs))
    n_layers = len(next(iter(report.expert_usage_js_bits.values()), []))
    for layer in range(n_layers):
        lines.append(f"  {layer:>5}  " + "  ".join(f"{report.expert_usage_js_bits[p][layer]:>10.3f}" for p in pairs))
    if n_layers:
        lines.append("   mean  " + "  ".join(
            f"{sum(report.expert_usage_js_bits[p]) / n_layers:>10.3f}" for p in pairs))
    return "\n".join(lines)


def read_report(folder: Path) -> BuildReport:
    return BuildReport(**json.loads((folder / "build_report.json").read_text()))


# ------------------------------------------------------------------------------------------------------ CLI ---


def main(argv: list[str] | None = None) -> int:
    """`ladder model build [NAME] [--force] [--seed N]` | `ladder model path [NAME] [--seed N]` (NAME: one of
    EMBEDDED_MODELS, default `embedded`)."""
    parser = argparse.ArgumentParser(prog="ladder model", description="the embedded models (tiny MoE LMs built here)")
    commands = parser.add_subparsers(dest="command", required=True)
    names = f"one of {', '.join(EMBEDDED_MODELS)} (default {DEFAULT_MODEL}: the tiny OLMoE)"
    build = commands.add_parser("build", help="train it (≤ 3 min on 2 CPU cores) unless already cached")
    build.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(EMBEDDED_MODELS), help=names)
    build.add_argument("--force", action="store_true", help="rebuild even if the cache holds it")
    build.add_argument("--seed", type=int, default=0)
    path = commands.add_parser("path", help=f"print its cache folder (${CACHE_ENV} or ~/.cache/pytest-ladder)")
    path.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(EMBEDDED_MODELS), help=names)
    path.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    passive_threads()
    recipe = EMBEDDED_MODELS[args.name]
    folder = embedded_model_dir(recipe, seed=args.seed)
    if args.command == "path":
        print(folder)
        if not (folder / "build_report.json").is_file():
            build_command = "ladder model build" + ("" if args.name == DEFAULT_MODEL else f" {args.name}")
            print(f"not built yet: run `{build_command}`", file=sys.stderr)
            return 1
        return 0
    cached = (folder / "build_report.json").is_file() and not args.force
    folder = ensure_embedded_model(seed=args.seed, force=args.force, recipe=recipe, log=print)
    if cached:
        print("cached (built earlier); report of that build:")
        print(format_report(read_report(folder)))
    print(folder)
    return 0


__all__ = ["Recipe", "RECIPE", "QWEN_RECIPE", "MIXTRAL_RECIPE", "EMBEDDED_MODELS", "DEFAULT_MODEL", "FAMILIES",
           "Family", "recipe_named", "BuildReport", "build_embedded_model", "ensure_embedded_model",
           "embedded_model_dir",
           "model_key", "cache_root", "train_tokenizer", "js_divergence_bits", "format_report", "main"]
