"""Enums and data classes of the API: finish reasons, log levels, model info and stats,
requests, events and outputs."""

import dataclasses
import enum
import math
from typing import List, Optional, Sequence, Tuple, Union

from ._base import status_name
from .errors import SparkinferError, Status, make_error


class Finish(enum.IntEnum):
    """Why a request ended (spk_finish)."""
    NONE = 0
    LENGTH = 1
    STOP = 2
    CANCELLED = 3
    ERROR = 4


class LogLevel(enum.IntEnum):
    """spk_log_level."""
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3
    NONE = 4


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Shape and identity of a loaded model (spk_model_info). Token ids are None if absent."""
    arch: str
    name: str
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_ctx: int
    bos_token: Optional[int]
    eos_token: Optional[int]
    n_params: int
    weight_bytes: int


@dataclasses.dataclass(frozen=True)
class RankStats:
    """What one rank of a loaded model holds (spk_rank_stats)."""
    rank: int
    stage: int
    tp_rank: int
    layer_begin: int
    layer_end: int
    weight_bytes: int
    resident_bytes: int
    kv_cache_bytes: int
    owned_bytes: int       # weights + KV cache + run buffers: what the rank holds for the model
    expert_begin: int = 0  # MoE: experts [begin, end) the rank runs (a slice under expert parallelism)
    expert_end: int = 0


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """Serving counters of a loaded model (spk_model_stats)."""
    n_queued: int
    n_running: int
    kv_blocks_total: int
    kv_blocks_free: int
    kv_block_size: int
    n_preempted: int
    n_generated: int


@dataclasses.dataclass
class Request:
    """A generation request (spk_request).

    ``prompt`` is token ids or text; text is tokenized with ``add_special`` (prepend BOS if the
    model wants it) and ``parse_special`` (turn "<|im_start|>"-style text into special tokens,
    on by default so the output of :meth:`Model.chat` can be passed directly). Sampling fields
    left as None take the library's defaults from spk_request_init (max_tokens 128,
    temperature 0.8, top_k 40, top_p 0.95, a random seed, min_p 0, repeat_penalty 1 over the
    last 64 tokens, frequency/presence penalties 0). temperature 0 is greedy. Generation stops
    after any of ``stop_tokens``, when the output text contains one of ``stop`` (up to 16
    strings; the match and what follows are not part of the text), or, unless ``ignore_eos``,
    at the model's end-of-generation tokens. ``logprobs`` asks for each token's log-prob (the
    model's log-softmax), ``top_logprobs`` (0..20) for that many alternatives too;
    ``prompt_logprobs`` for events of the prompt tokens first (echo: the first one's log-prob is
    None).
    """
    prompt: Union[str, bytes, Sequence[int]]
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop_tokens: Sequence[int] = ()
    ignore_eos: bool = False
    add_special: bool = True
    parse_special: bool = True
    stop: Sequence[str] = ()
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    repeat_last_n: Optional[int] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False


@dataclasses.dataclass(frozen=True)
class Event:
    """A token event, or a final event with the finish reason (spk_event).

    ``token``/``position`` are None on an event without a token (e.g. cancelled, error). The
    last event of a request has ``finish`` != Finish.NONE; ``status`` is Status.OK unless
    ``finish`` is Finish.ERROR. ``time_ns`` is the CLOCK_MONOTONIC time (``time.monotonic_ns()``)
    at which the engine produced the event: measure TTFT/TPOT with it, not with the time of poll.
    ``text`` is what the event adds to the request's output text (complete characters, special
    tokens skipped, held back while it could start a stop string; an event may carry text
    without a token). ``logprob`` (None unless asked for) and ``top_logprobs`` (a list of
    (token, logprob), most likely first) are the model's log-softmax. ``message`` is the
    library's detail when ``finish`` is Finish.ERROR (e.g. "prompt is 5123 tokens; the context
    holds 4096"), else "".
    """
    request_id: int
    token: Optional[int]
    position: Optional[int]
    finish: Finish
    status: Status
    time_ns: int = 0
    text: str = ""
    logprob: Optional[float] = None
    top_logprobs: Tuple[Tuple[int, float], ...] = ()
    message: str = ""
    n_prompt: int = 0

    @property
    def finished(self) -> bool:
        return self.finish != Finish.NONE

    def error(self) -> Optional[SparkinferError]:
        """The request's error as an exception (not raised), or None."""
        if self.finish != Finish.ERROR:
            return None
        return make_error(self.status, self.message or "request %d ended with an error" % self.request_id,
                          status_name(self.status), "request %d" % self.request_id)


def _output_from_c(o):
    """An Event from a spk_output."""
    try:
        fin = Finish(o.finish)
    except ValueError:
        fin = o.finish
    try:
        st = Status(o.status)
    except ValueError:
        st = o.status
    lp = None if math.isnan(o.logprob) else float(o.logprob)
    top = tuple((int(o.top[i].token), float(o.top[i].logprob)) for i in range(max(0, min(o.n_top, 20))))
    return Event(int(o.request_id), None if o.token < 0 else int(o.token),
                 None if o.position < 0 else int(o.position), fin, st, int(o.time_ns),
                 o.text[:o.text_len].decode("utf-8", "replace"), lp, top,
                 o.message.decode("utf-8", "replace"), int(o.n_prompt))


def _event_from_c(e):
    try:
        fin = Finish(e.finish)
    except ValueError:
        fin = e.finish
    try:
        st = Status(e.status)
    except ValueError:
        st = e.status
    return Event(int(e.request_id), None if e.token < 0 else int(e.token),
                 None if e.position < 0 else int(e.position), fin, st, int(e.time_ns))


@dataclasses.dataclass
class Output:
    """The result of one request of :meth:`Model.generate_many`. ``logprobs`` and
    ``top_logprobs`` hold one entry per token when the request asked for them;
    ``prompt_logprobs`` one (token, logprob, top_logprobs) per prompt token with
    Request.prompt_logprobs; ``message`` is the library's error detail."""
    request_id: int
    tokens: List[int]
    text: str
    finish: Finish
    status: Status
    message: str = ""
    logprobs: Optional[List[float]] = None
    top_logprobs: Optional[List[Tuple[Tuple[int, float], ...]]] = None
    prompt_logprobs: Optional[List[Tuple[int, Optional[float], Tuple[Tuple[int, float], ...]]]] = None

    def error(self) -> Optional[SparkinferError]:
        """The request's error as an exception (not raised), or None."""
        if self.finish != Finish.ERROR:
            return None
        return make_error(self.status, self.message or "request %d ended with an error" % self.request_id,
                          status_name(self.status), "request %d" % self.request_id)


_SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop_tokens", "ignore_eos", "stop", "min_p",
                  "repeat_penalty", "repeat_last_n", "frequency_penalty", "presence_penalty", "logprobs",
                  "top_logprobs", "prompt_logprobs",
                  "add_special", "parse_special")
