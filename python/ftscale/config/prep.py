"""The prep config (`ftscale prep`): tokenizer, sources, dedup, decontamination, output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ftscale.config.base import PLAIN_NAME_RULE, plain_name, require
from ftscale.errors import ConfigError

if TYPE_CHECKING:
    from ftscale.data.pipeline import EngineOptions

@dataclass(frozen=True)
class TokenizerConfig:
    """path: a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json), a
    .gguf model file (its tokenizer and chat template are used), or a .tiktoken BPE file
    (CPT only: it has no chat template)."""

    path: str
    add_eos: bool = True  # CPT: append EOS to every document so documents stay separable
    chat_template: str | None = None  # override the tokenizer's own template (jinja text or file)
    # SFT: "auto" renders with minijinja in Rust when it renders the template exactly as Jinja2
    # (checked on probe conversations), else with transformers in Python; "rust" / "python" force one.
    chat_engine: Literal["auto", "rust", "python"] = "auto"


@dataclass(frozen=True)
class SourceConfig:
    name: str
    paths: list[str]
    kind: Literal["cpt", "sft", "preference"] = "cpt"
    text_field: str = "text"
    messages_field: str = "messages"  # preference: the prompt when the record has no prompt_field
    # Preference pairs: the prompt (a string or messages; absent: the messages field, or the messages
    # chosen and rejected share) and the two completions (a string or an assistant message list).
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    family_field: str | None = None
    system_prompt: str | None = None  # SFT, preference: inserted when a conversation has none
    # Over seq_len: CPT documents are split at load time; an SFT sample is truncated or dropped; a
    # preference pair whose side is over seq_len // 2 has that completion cut or is dropped.
    # Unset: the kind's default (split for cpt, truncate for sft and preference).
    overlong: Literal["split", "truncate", "drop"] | None = None
    max_record_bytes: int | None = None
    # SFT: an assistant turn the chat template rewrites once later turns follow (Qwen3-style
    # reasoning stripping) becomes a sample of its own ("expand"), or is supervised where its text
    # still appears in the full rendering ("locate"; a conversation where it does not is quarantined).
    rewritten_turns: Literal["expand", "locate"] = "expand"
    tools_field: str = "tools"  # SFT, preference: a record's tool definitions, passed to the template as `tools`
    # SFT, preference: extra role names mapped to system/user/assistant/tool, over the built-in ShareGPT names
    # (human, gpt, observation, function_call, ...); e.g. {bot: assistant}.
    role_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.overlong is None:
            object.__setattr__(self, "overlong", "split" if self.kind == "cpt" else "truncate")

    def check(self, key: str) -> None:
        if not plain_name(self.name):
            raise ConfigError(f"{key}.name: {self.name!r} must be {PLAIN_NAME_RULE} (it names a directory)")
        if not self.paths:
            raise ConfigError(f"{key}.paths: give at least one file or directory")
        if self.kind == "sft" and self.overlong == "split":
            raise ConfigError(f"{key}.overlong: 'split' would cut a conversation; choose truncate or drop for sft")
        if self.kind == "preference" and self.overlong == "split":
            raise ConfigError(f"{key}.overlong: 'split' would cut a preference pair; choose truncate (the default: "
                              "the completion's end is cut) or drop for preference")
        if self.kind == "preference":
            names = {"prompt_field": self.prompt_field, "chosen_field": self.chosen_field,
                     "rejected_field": self.rejected_field}
            if len(set(names.values())) < len(names):
                raise ConfigError(f"{key}: prompt_field, chosen_field and rejected_field must name different "
                                  f"columns, got {names}")
        require(self, key, "max_record_bytes", self.max_record_bytes is None or self.max_record_bytes >= 1, ">= 1")
        from ftscale.data.io.chat_formats import check_role_map

        check_role_map(self.role_map, f"{key}.role_map")


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    verify: Literal["auto", "estimate", "exact", "none"] = "auto"

    def check(self, key: str) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"{key}.threshold: must be in (0, 1], got {self.threshold}")
        if not 2 <= self.num_perm <= 4096:
            raise ConfigError(f"{key}.num_perm: must be in 2..4096, got {self.num_perm}")
        if self.ngram < 1:
            raise ConfigError(f"{key}.ngram: must be >= 1, got {self.ngram}")


@dataclass(frozen=True)
class DecontamConfig:
    eval_paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    messages_field: str | None = None
    ngram: int = 13
    min_fraction: float = 0.0
    roles: list[Literal["system", "user", "assistant"]] | None = None

    def check(self, key: str) -> None:
        if self.ngram < 1:
            raise ConfigError(f"{key}.ngram: must be >= 1, got {self.ngram}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ConfigError(f"{key}.min_fraction: must be in [0, 1], got {self.min_fraction}")


@dataclass(frozen=True)
class PrepConfig:
    """A prep job. ``engine_options()`` is how it runs, the rest is what it makes."""

    output: str
    tokenizer: TokenizerConfig
    sources: list[SourceConfig]
    seq_len: int = 2048
    val_fraction: float = 0.01
    seed: int = 0
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    shard_rows: int = 20_000
    # How the job runs (none of these changes the output; `ftscale prep --executor ...` sets them):
    executor: Literal["local", "ray"] = "local"
    workers: int | None = None  # units in parallel (default: all cores / the Ray cluster's CPUs)
    memory_budget: str = "2GiB"  # local: the whole job; ray: each task
    work_dir: str | None = None  # spill directory (default: <output>/.ftscale-work)
    keep_work: bool = False
    num_threads: int | None = None  # threads of each Rust call

    def check(self, key: str) -> None:
        self.engine_options().check()
        if self.seq_len < 8:
            raise ConfigError(f"seq_len: must be >= 8, got {self.seq_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.shard_rows < 1:
            raise ConfigError(f"shard_rows: must be >= 1, got {self.shard_rows}")
        require(self, key, "seed", self.seed >= 0, ">= 0")
        require(self, key, "num_threads", self.num_threads is None or self.num_threads >= 1, ">= 1")
        require(self, key, "workers", self.workers is None or self.workers >= 1, ">= 1")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"sources: names must be unique; repeated: {', '.join(dup)}")
        if not self.sources:
            raise ConfigError("sources: give at least one source")
        if self.tokenizer.path.endswith(".tiktoken"):
            for i, s in enumerate(self.sources):
                if s.kind in ("sft", "preference"):
                    raise ConfigError(f"sources.{i}.kind: {s.kind} needs a chat template, and tokenizer.path "
                                      f"{self.tokenizer.path} is a .tiktoken file (cpt only)")

    def engine_options(self) -> EngineOptions:
        from ftscale.data.pipeline import EngineOptions, parse_bytes

        return EngineOptions(executor=self.executor, workers=self.workers,
                             memory_budget_bytes=parse_bytes(self.memory_budget, "memory_budget"),
                             work_dir=self.work_dir, keep_work=self.keep_work, num_threads=self.num_threads)
