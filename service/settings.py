"""Service configuration: environment (`RNNSERVE_*`) -> one `Settings` -> constructor arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. Each field reads `RNNSERVE_<FIELD>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="ignore")

    # where and how to serve
    models_dir: Path = Field(Path("models"), description="Folder scanned for model artifacts.")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind.")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve the v2 protocol over gRPC (KServe's `GRPCInferenceService`, "
        "Triton's streaming) on this port of `host`; unset: off (docs/protocols.md says why). "
        "Every API worker serves it (SO_REUSEPORT spreads connections over them).",
    )
    providers: list[str] | None = Field(
        None,
        description="onnxruntime execution providers in priority order; default: CUDA when "
        "available, else CPU.",
    )
    require_all_models: bool = Field(
        False, description="/readyz answers 503 when any artifact was refused at start-up."
    )
    model_control: bool = Field(
        True,
        description="The model repository API (load and unload models at run time: "
        "`/v2/repository/...`, `/v1/repository/...`); false: it answers 403.",
    )
    admin_keys: str = Field(
        "",
        description="With API keys on: the key names (comma-separated) allowed to load and "
        "unload models; with none named, nobody may.",
    )
    unload_drain_s: float = Field(
        300.0,
        ge=0,
        le=7 * 86400,
        description="How long an unloaded model version keeps serving the live sessions "
        "pinned to it before they end (409 `model_unloaded`); a request may ask for another.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime intra-op threads per model; 0 = auto: one fewer than the CPUs "
        "the process may use (at least 1), leaving a core to the event loop.",
    )
    variant: Literal["int8", "fp16"] | None = Field(
        None,
        description="Graph variant to serve where a model's manifest has it (others load their "
        "fp32 graph); default: the fp32 graph everywhere. Opt-in: an int8 graph quantizes "
        "activations per call over the whole batch, so padded == alone and chunked == whole "
        "hold only approximately.",
    )
    state_on_device: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Where a decode batch's recurrent state lives between steps: `on`, as "
        "onnxruntime values on the model's device, bound to each step (IO binding: a step "
        "moves only tokens in and logits out); `off`, as host arrays passed to every call; "
        "`auto`: on the device unless the model runs on the CPU provider (where the two are "
        "the same memory). Results are bit-identical either way.",
    )
    gil_switch_interval_ms: float = Field(
        0.5,
        gt=0,
        le=100,
        description="Python's thread switch interval (`sys.setswitchinterval`), set by `serve`. "
        "Each model's engine thread needs the GIL after every onnxruntime call; Python's default "
        "(5 ms) lets a busy event loop hold it for a whole decode step.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_json: bool | Literal["auto"] = Field(
        "auto",
        description="Write logs as one JSON object per line (`true`), as readable text lines "
        "(`false`), or `auto`: text on a terminal, JSON otherwise (a container, a file, a "
        "log collector).",
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long in-flight work may take to finish."
    )

    # scheduler
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="API worker processes in front of one engine process (0: one process "
        "serves everything). See docs/api.md#processes for the default's reasoning.",
    )
    engine_transport: Literal["inprocess", "zmq"] = Field(
        "inprocess",
        description="With `workers` 0: how the API reaches the engine in its own process. `zmq` "
        "goes through the same wire as `--workers` (for testing the process boundary).",
    )
    max_batch_size: int = Field(64, ge=1, le=4096, description="Rows per prefill/predict batch.")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long a prefill/predict batch may wait for as many rows as the last.",
    )
    max_queue: int = Field(
        1024, ge=1, description="Waiting prefill/predict jobs per model before 503 `overloaded`."
    )
    max_streams: int = Field(
        256, ge=1, description="Generation streams decoded together per model (one batch)."
    )
    max_batch_tokens: int = Field(
        1 << 16, ge=1, description="Padded tokens (rows × longest row) per prefill batch."
    )
    prefill_chunk_tokens: int = Field(
        4096,
        ge=1,
        description="Most tokens of one text run in one prefill pass (fewer when the pass's "
        "time budget is less); a longer one continues in later passes, with other requests "
        "and decode steps in between (chunked prefill).",
    )
    stall_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Readiness (/readyz, /v2/health/ready) answers 503 when a model's engine "
        "thread has held work this long without moving (a stuck call, a scheduler that "
        "stopped), or the engine process does not answer a worker within 2 s.",
    )
    prefill_pass_ms: float = Field(
        50.0,
        ge=0,
        description="About how long one prefill pass may run (from the measured cost of a "
        "token), so no request waits behind more than that of another's; 0: only "
        "`max_batch_tokens` bounds a pass.",
    )

    # request limits
    max_text_chars: int = Field(100_000, ge=1, description="Longest text/prompt accepted.")
    max_inputs: int = Field(256, ge=1, description="Most texts in one predict request.")
    max_request_tokens: int = Field(
        1_000_000,
        ge=1,
        description="Most tokens one predict/infer request may bring, all its texts together "
        "(422 `invalid_input` naming `inputs`).",
    )
    max_tokens_limit: int = Field(4096, ge=1, description="Largest `max_tokens` accepted.")
    max_stop: int = Field(4, ge=0, description="Most stop strings in one generate request.")

    # sessions
    store: Literal["memory", "redis"] = Field("memory", description="Session store backend.")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (store=redis); with `redis_cluster`, any node of the cluster.",
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Answer a session change only once this many Redis replicas have it "
        "(`WAIT`): an acknowledged change then survives a failover (docs/reliability.md); "
        "0: answer once the primary has it.",
    )
    redis_wait_timeout_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How long a change waits for `redis_wait_replicas`; past it the request "
        "answers 503 `store_unavailable` (the change stands on the primary: a retry with the "
        "same Idempotency-Key replays it).",
    )
    redis_sentinels: str = Field(
        "",
        description="Find the Redis primary through these Sentinels (`host:port`, "
        "comma-separated) instead of `redis_url`: after a failover the store asks them for the "
        "new primary.",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="The name the Sentinels know the primary by."
    )
    redis_cluster: bool = Field(
        False,
        description="The Redis at `redis_url` is a Redis Cluster: sessions spread over its "
        "shards (docs/deploy.md).",
    )
    redis_timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="One deadline per session-store call (connect, read and retry together): "
        "past it the request answers 503 `store_unavailable`, whether Redis is down or hung.",
    )
    max_sessions: int = Field(100_000, ge=1, description="Cap on live sessions.")
    session_evict: Literal["refuse", "lru"] = Field(
        "refuse",
        description="At the cap: refuse new sessions (429 `session_limit`) or evict the least "
        "recently used idle one (its id then answers 404 `session_evicted`).",
    )
    session_ttl_s: float = Field(3600.0, gt=0, description="Default idle TTL of a session.")
    max_session_ttl_s: float = Field(86400.0, gt=0, description="Largest TTL a client may ask.")
    expired_memory_s: float = Field(
        86400.0, ge=0, description="How long expired/evicted ids are remembered for clear 404s."
    )
    idempotency_ttl_s: float = Field(
        3600.0, gt=0, description="How long an `Idempotency-Key` result is kept for replay."
    )

    # access (service/api/middleware/auth.py; docs/reliability.md)
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (`key` or `name:key`); any key set turns "
        "`Authorization: Bearer` checking on. Off (everyone anonymous) when no key is set.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of hashed keys, one per line: `name sha256:<hex>` (`python -m "
        "service.security NAME` prints one); `#` comments. Combined with `api_keys`. Setting it "
        "turns key checking on. Re-read when it changes and on SIGHUP, without a restart; a "
        "file that does not parse (or holds no key) is refused and the previous keys stay.",
    )
    api_keys_reload_s: float = Field(
        5.0,
        ge=0,
        description="At most this often (seconds) a request checks whether the keys file "
        "changed (mtime, size, inode) and re-reads it; 0 = only on SIGHUP.",
    )
    auth_open_health: bool = Field(
        True, description="With keys on: /healthz, /readyz and /v2/health/* need no key."
    )
    auth_open_metrics: bool = Field(True, description="With keys on: /metrics needs no key.")
    auth_open_docs: bool = Field(
        True, description="With keys on: /docs, /openapi.json and the playground page need no key."
    )
    debug_log_bodies: bool = Field(
        False,
        description="Log request bodies (texts!) at debug level. Never keys. Off unless you are "
        "debugging on your own data.",
    )

    # limits and back-pressure (service/api/middleware/limits.py)
    max_body_bytes: int = Field(
        16 << 20, ge=1024, description="Largest request body (after decompression: v2 gzip)."
    )
    max_sessions_per_key: int = Field(
        10_000, ge=1, description="Live sessions one API key may hold (429 `session_limit`)."
    )
    max_streams_per_key: int = Field(
        64,
        ge=1,
        description="Concurrent generations (streams, JSON generates, completions, WebSocket "
        "generates) per API key, per replica (429 `stream_limit`).",
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A request must start its response within this (504 `timeout`); a stream's "
        "body is then bounded by `max_tokens`.",
    )
    stream_buffer_bytes: int = Field(
        512 << 10,
        ge=4096,
        description="Tokens a stream may have generated ahead of its client (beyond what the "
        "socket buffers hold), in estimated bytes: ~200 a token, +160 per logprob alternative. "
        "Past it the generation stops with `client_too_slow` (503) and commits nothing: ~2,600 "
        "plain tokens, ~150 with 20 logprobs.",
    )
    stream_writes_per_s: float = Field(
        10_000,
        ge=0,
        description="Under load, the SSE writes a second that one API process aims to stay "
        "under: with n streams open in the process, a stream waits n / this (when that is at "
        "least 1 ms) after a write, and its next write carries every token that arrived "
        "meanwhile. A write costs ~35 µs of CPU whatever it carries (docs/benchmarks.md); "
        "0 = write as soon as tokens are ready.",
    )
    max_open_streams: int = Field(
        1024,
        ge=1,
        description="Concurrent streams (SSE, JSON generates, completions, WebSocket "
        "connections) on this replica for all callers together, keys on or off (503 "
        "`overloaded`; WebSocket close 1013).",
    )
    ws_max_queued_bytes: int = Field(
        4 << 20,
        ge=1024,
        description="Characters of WebSocket messages waiting behind the running operation on "
        "one connection; past it the socket is closed with code 1008.",
    )
    keep_alive_timeout_s: int = Field(
        75,
        ge=1,
        description="An idle kept-alive connection is closed after this. Longer than the "
        "idle timeouts of common clients and balancers (httpx 5 s, nginx and AWS ALB 60 s), "
        "so they drop an idle connection first: when the server closed it first, a request "
        "sent on it meanwhile was lost (`ReadError`, or a 502 from the balancer).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection must deliver a request's headers within this from its "
        "first byte (or from connecting); else it is closed (slow-header clients).",
    )
    send_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A client that does not take a response or stream frame (or WebSocket "
        "message) within this is dropped: its work is cancelled and its slot freed.",
    )
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto",
        description="uvicorn's HTTP/1.1 parser, both with the header and flush deadlines: "
        "`httptools` (C; `auto` picks it when installed, as uvicorn[standard] does) or `h11` "
        "(pure Python, slower per request).",
    )

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """`redis_sentinels` as (host, port) pairs."""
        out = []
        for item in filter(None, (i.strip() for i in self.redis_sentinels.split(","))):
            host, sep, port = item.rpartition(":")
            if not (sep and host):
                raise ValueError(item)
            out.append((host, int(port)))
        return out

    @model_validator(mode="after")
    def _sentinels_read(self) -> Settings:
        try:
            self.sentinel_addresses()
        except ValueError:
            raise ValueError(
                f"RNNSERVE_REDIS_SENTINELS must be host:port[,host:port...], "
                f"not {self.redis_sentinels!r}"
            ) from None
        if self.redis_sentinels.strip() and self.redis_cluster:
            raise ValueError(
                "RNNSERVE_REDIS_SENTINELS and RNNSERVE_REDIS_CLUSTER exclude each other"
            )
        return self

    @model_validator(mode="after")
    def _wait_within_the_store_deadline(self) -> Settings:
        """A change waits for its replicas inside the store call's one deadline: a wait as
        long as the deadline would turn every slow replica into a timeout instead of its clear
        error."""
        if self.redis_wait_replicas and self.redis_wait_timeout_s >= self.redis_timeout_s:
            raise ValueError(
                f"RNNSERVE_REDIS_WAIT_TIMEOUT_S ({self.redis_wait_timeout_s:g}) must be below "
                f"RNNSERVE_REDIS_TIMEOUT_S ({self.redis_timeout_s:g})"
            )
        return self
