"""Loading libsparkinfer and declaring its C ABI for ctypes.

Everything here mirrors include/sparkinfer/sparkinfer.h exactly; nothing else in the package
touches ctypes prototypes. The library is found, in this order:

1. the path in the environment variable ``SPARKINFER_LIB`` (if set, it is the only candidate:
   a wrong path is an error rather than a silent fallback to another copy of the library);
2. ``ctypes.util.find_library("sparkinfer")``;
3. ``libsparkinfer.so.0`` on the dynamic loader's default path.
"""

import ctypes
import ctypes.util
import os

# The header this module mirrors (include/sparkinfer/sparkinfer.h).
HEADER_VERSION_MAJOR = 0
HEADER_VERSION_MINOR = 1
HEADER_VERSION_PATCH = 0
HEADER_VERSION_STRING = "0.1.0"

spk_status = ctypes.c_int  # enum spk_status


class spk_cluster_config(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("rank", ctypes.c_int),
        ("world_size", ctypes.c_int),
        ("coordinator", ctypes.c_char_p),
        ("cluster_key", ctypes.c_char_p),
        ("transport", ctypes.c_char_p),
        ("allow_open_cluster", ctypes.c_int),
        ("n_threads", ctypes.c_int),
        ("connect_timeout_ms", ctypes.c_int),
        ("peer_timeout_ms", ctypes.c_int),
        ("heartbeat_ms", ctypes.c_int),
        ("unauthenticated_data", ctypes.c_int),
    ]


class spk_model_config(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("path", ctypes.c_char_p),
        ("pp", ctypes.c_int),
        ("tp", ctypes.c_int),
        ("n_ctx", ctypes.c_int),
        ("max_seqs", ctypes.c_int),
        ("n_threads", ctypes.c_int),
        ("queue_capacity", ctypes.c_int),
        ("kv_cache_bytes", ctypes.c_uint64),
        ("backend", ctypes.c_int),
        ("device", ctypes.c_int),
        ("ep", ctypes.c_int),
    ]


class spk_model_info(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("arch", ctypes.c_char * 32),
        ("name", ctypes.c_char * 128),
        ("n_layers", ctypes.c_int),
        ("n_embd", ctypes.c_int),
        ("n_heads", ctypes.c_int),
        ("n_kv_heads", ctypes.c_int),
        ("head_dim", ctypes.c_int),
        ("n_ff", ctypes.c_int),
        ("n_vocab", ctypes.c_int),
        ("n_ctx_train", ctypes.c_int),
        ("n_ctx", ctypes.c_int),
        ("bos_token", ctypes.c_int32),
        ("eos_token", ctypes.c_int32),
        ("n_params", ctypes.c_uint64),
        ("weight_bytes", ctypes.c_uint64),
    ]


class spk_rank_stats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("rank", ctypes.c_int),
        ("stage", ctypes.c_int),
        ("tp_rank", ctypes.c_int),
        ("layer_begin", ctypes.c_int),
        ("layer_end", ctypes.c_int),
        ("weight_bytes", ctypes.c_uint64),
        ("resident_bytes", ctypes.c_uint64),
        ("kv_cache_bytes", ctypes.c_uint64),
        ("owned_bytes", ctypes.c_uint64),
        ("n_steps", ctypes.c_uint64),
        ("compute_ns", ctypes.c_uint64),
        ("recv_wait_ns", ctypes.c_uint64),
        ("send_ns", ctypes.c_uint64),
        ("handoff_ns", ctypes.c_uint64),
        ("n_handoffs", ctypes.c_uint64),
        ("expert_begin", ctypes.c_int),
        ("expert_end", ctypes.c_int),
    ]


class spk_model_stats(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("n_queued", ctypes.c_int),
        ("n_running", ctypes.c_int),
        ("kv_blocks_total", ctypes.c_int),
        ("kv_blocks_free", ctypes.c_int),
        ("kv_block_size", ctypes.c_int),
        ("n_preempted", ctypes.c_uint64),
        ("n_generated", ctypes.c_uint64),
        ("n_submit_waiting", ctypes.c_int),
    ]


class spk_chat_message(ctypes.Structure):
    _fields_ = [
        ("role", ctypes.c_char_p),
        ("content", ctypes.c_char_p),
    ]


class spk_chat_options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("add_assistant", ctypes.c_int),
        ("enable_thinking", ctypes.c_int),
    ]


class spk_request(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("prompt", ctypes.POINTER(ctypes.c_int32)),
        ("n_prompt", ctypes.c_size_t),
        ("max_tokens", ctypes.c_int),
        ("temperature", ctypes.c_float),
        ("top_k", ctypes.c_int),
        ("top_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("stop_tokens", ctypes.POINTER(ctypes.c_int32)),
        ("n_stop", ctypes.c_size_t),
        ("ignore_eos", ctypes.c_int),
        ("text", ctypes.c_char_p),
        ("text_len", ctypes.c_size_t),
        ("stop_strings", ctypes.POINTER(ctypes.c_char_p)),
        ("n_stop_strings", ctypes.c_size_t),
        ("min_p", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("repeat_last_n", ctypes.c_int),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("logprobs", ctypes.c_int),
        ("top_logprobs", ctypes.c_int),
        ("prompt_logprobs", ctypes.c_int),
        ("private_events", ctypes.c_int),
    ]


MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_TOP_LOGPROBS = 20
OUTPUT_TEXT_CAP = 512
SEED_RANDOM = (1 << 64) - 1


class spk_token_logprob(ctypes.Structure):
    _fields_ = [
        ("token", ctypes.c_int32),
        ("logprob", ctypes.c_float),
    ]


class spk_output(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("request_id", ctypes.c_uint64),
        ("token", ctypes.c_int32),
        ("position", ctypes.c_int32),
        ("finish", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("time_ns", ctypes.c_uint64),
        ("logprob", ctypes.c_float),
        ("n_top", ctypes.c_int32),
        ("top", spk_token_logprob * MAX_TOP_LOGPROBS),
        ("text_len", ctypes.c_uint32),
        ("text", ctypes.c_char * OUTPUT_TEXT_CAP),
        ("n_prompt", ctypes.c_int32),
        ("n_generated", ctypes.c_int32),
        ("message", ctypes.c_char * 256),
    ]


class spk_event(ctypes.Structure):
    _fields_ = [
        ("request_id", ctypes.c_uint64),
        ("token", ctypes.c_int32),
        ("position", ctypes.c_int32),
        ("finish", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("time_ns", ctypes.c_uint64),
        ("reserved", ctypes.c_int32 * 2),
    ]


LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_vp = ctypes.c_void_p
_sz = ctypes.c_size_t
_szp = ctypes.POINTER(ctypes.c_size_t)
_i32p = ctypes.POINTER(ctypes.c_int32)

# name: (restype, argtypes)
_PROTOTYPES = {
    "spk_version_number": (ctypes.c_uint, []),
    "spk_version_string": (ctypes.c_char_p, []),
    "spk_build_info": (ctypes.c_char_p, []),
    "spk_status_str": (ctypes.c_char_p, [spk_status]),
    "spk_last_error": (ctypes.c_char_p, []),
    "spk_set_log_callback": (None, [LOG_FN, _vp, ctypes.c_int]),
    "spk_cluster_config_init": (spk_status, [ctypes.POINTER(spk_cluster_config)]),
    "spk_cluster_open": (spk_status, [ctypes.POINTER(spk_cluster_config), ctypes.POINTER(_vp)]),
    "spk_cluster_serve": (spk_status, [_vp]),
    "spk_cluster_rank": (ctypes.c_int, [_vp]),
    "spk_cluster_world_size": (ctypes.c_int, [_vp]),
    "spk_cluster_close": (spk_status, [_vp]),
    "spk_model_config_init": (spk_status, [ctypes.POINTER(spk_model_config)]),
    "spk_model_load": (spk_status, [_vp, ctypes.POINTER(spk_model_config), ctypes.POINTER(_vp)]),
    "spk_model_free": (spk_status, [_vp]),
    "spk_model_get_info": (spk_status, [_vp, ctypes.POINTER(spk_model_info)]),
    "spk_model_get_rank_stats": (spk_status, [_vp, ctypes.c_int, ctypes.POINTER(spk_rank_stats)]),
    "spk_model_get_stats": (spk_status, [_vp, ctypes.POINTER(spk_model_stats)]),
    "spk_tokenize": (spk_status, [_vp, ctypes.c_char_p, _sz, ctypes.c_int, ctypes.c_int, _i32p, _sz, _szp]),
    "spk_detokenize": (spk_status, [_vp, _i32p, _sz, ctypes.c_int, ctypes.c_char_p, _sz, _szp]),
    "spk_detokenizer_new": (spk_status, [_vp, ctypes.c_int, ctypes.POINTER(_vp)]),
    "spk_detokenizer_push": (spk_status, [_vp, ctypes.c_int32, ctypes.c_char_p, _sz, _szp]),
    "spk_detokenizer_free": (None, [_vp]),
    "spk_chat_apply": (spk_status, [_vp, ctypes.POINTER(spk_chat_message), _sz, ctypes.c_int,
                                    ctypes.c_char_p, _sz, _szp]),
    "spk_chat_options_init": (spk_status, [ctypes.POINTER(spk_chat_options)]),
    "spk_chat_apply_opts": (spk_status, [_vp, ctypes.POINTER(spk_chat_message), _sz, ctypes.POINTER(spk_chat_options),
                                         ctypes.c_char_p, _sz, _szp]),
    "spk_request_init": (spk_status, [ctypes.POINTER(spk_request)]),
    "spk_submit": (spk_status, [_vp, ctypes.POINTER(spk_request), _sz, ctypes.POINTER(ctypes.c_uint64)]),
    "spk_submit_wait": (spk_status, [_vp, ctypes.POINTER(spk_request), _sz, ctypes.POINTER(ctypes.c_uint64),
                                     ctypes.c_int]),
    "spk_poll": (spk_status, [_vp, ctypes.POINTER(spk_event), _sz, _szp, ctypes.c_int]),
    "spk_cancel": (spk_status, [_vp, ctypes.c_uint64]),
    "spk_output_init": (spk_status, [ctypes.POINTER(spk_output)]),
    "spk_poll_outputs": (spk_status, [_vp, ctypes.POINTER(spk_output), _sz, _szp, ctypes.c_int]),
    "spk_poll_request": (spk_status, [_vp, ctypes.c_uint64, ctypes.POINTER(spk_output), _sz, _szp, ctypes.c_int]),
    "spk_model_info_init": (spk_status, [ctypes.POINTER(spk_model_info)]),
    "spk_rank_stats_init": (spk_status, [ctypes.POINTER(spk_rank_stats)]),
    "spk_model_stats_init": (spk_status, [ctypes.POINTER(spk_model_stats)]),
}


def _candidates():
    env = os.environ.get("SPARKINFER_LIB")
    if env:
        return [("SPARKINFER_LIB=" + env, env)], True
    out = []
    found = ctypes.util.find_library("sparkinfer")
    if found:
        out.append(('ctypes.util.find_library("sparkinfer") -> ' + found, found))
    else:
        out.append(('ctypes.util.find_library("sparkinfer") found nothing', None))
    out.append(("libsparkinfer.so.0 on the default loader path", "libsparkinfer.so.0"))
    return out, False


def load():
    """Load the shared library and declare every prototype; ImportError if impossible."""
    tried = []
    cands, from_env = _candidates()
    lib = None
    for what, path in cands:
        if path is None:
            tried.append(what)
            continue
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            tried.append("%s: %s" % (what, e))
    if lib is None:
        hint = "" if from_env else " (set SPARKINFER_LIB to the path of libsparkinfer.so.0)"
        raise ImportError("sparkinfer: cannot load libsparkinfer; tried: " + "; ".join(tried) + hint)
    missing = []
    for name, (res, args) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = res
        fn.argtypes = args
    if missing:
        raise ImportError("sparkinfer: %s lacks %s (an older library?)" % (lib._name, ", ".join(missing)))
    major = lib.spk_version_number() // 10000
    if major != HEADER_VERSION_MAJOR:
        raise ImportError("sparkinfer: %s is version %s (major %d); these bindings need major %d"
                          % (lib._name, lib.spk_version_string().decode(), major, HEADER_VERSION_MAJOR))
    return lib


def init_struct(lib, cls, init_name):
    """A `cls` filled with the library's defaults by its *_init function.

    The library's init writes its own sizeof, which may be larger than ours if the library is
    newer; so init runs on a roomy scratch buffer, and we keep the fields we know with
    struct_size set to our size (the library then uses defaults for the fields we lack).
    """
    scratch = (ctypes.c_char * max(4096, 2 * ctypes.sizeof(cls)))()
    st = getattr(lib, init_name)(ctypes.cast(scratch, ctypes.POINTER(cls)))
    if st != 0:
        return None, st
    obj = cls.from_buffer_copy(scratch, 0)
    obj.struct_size = ctypes.sizeof(cls)
    return obj, 0
