"""`generation_backend: vllm`: hf_rlhf's sampling settings as vLLM `SamplingParams`, the weight sync, and the two
ways of reaching vLLM (docs/vllm.md).

- `server`: an `hf-rlhf vllm-serve` process (`hf_rlhf.vllm_serve`, possibly in its own Python environment) over HTTP.
- `colocate`: the same `Engine` inside this process (CUDA machines with vLLM importable here; sleep/wake between
  generations). Not testable on a CPU machine, where vLLM's build cannot share hf_rlhf's environment.

Weights reach vLLM from disk: before generating, the model's weights (merged for a LoRA policy) are written as
safetensors to `vllm_sync_dir` whenever they changed since the last sync, and the engine reloads them
(`reload_weights`). NCCL broadcast (TRL's `VLLMClient`, GPU to GPU) is not built.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref

import torch
from torch import nn
from transformers import GenerationConfig

from .sampling import NEUTRAL_FIELDS, SAMPLING_ONLY, GenerationBackend, Generations

# `GenerationConfig` fields with a vLLM `SamplingParams` equivalent. Every other field of `NEUTRAL_FIELDS` must keep its
# neutral value (vLLM cannot honour it), except those that do not change what is sampled (`OUTPUT_ONLY`).
MAPPED = ("top_k", "top_p", "min_p", "repetition_penalty", "min_new_tokens")
OUTPUT_ONLY = ("use_cache", "output_scores", "output_logits", "return_dict_in_generate")


def sampling_params(config: GenerationConfig) -> dict:
    """vLLM `SamplingParams` keyword arguments for `config` (from `hf_rlhf.sampling.sampling_config`), field by field.

    Raises `ValueError` naming the field when `config` sets something vLLM cannot do the same way (beams, n-gram
    blocking, forced or suppressed tokens, typical-p, ...), rather than sampling from another distribution.
    """
    for key, neutral in NEUTRAL_FIELDS.items():
        if key in MAPPED or key in OUTPUT_ONLY or not hasattr(config, key):
            continue
        value = getattr(config, key)
        if value != neutral and not (value is None and key in SAMPLING_ONLY):
            raise ValueError(
                f"generation setting {key}={value!r} has no vLLM equivalent: use generation_backend 'hf', or leave "
                f"{key} at {neutral!r}"
            )
    if not config.max_new_tokens:
        raise ValueError("generation needs max_new_tokens for vLLM (max_length is not supported)")
    if config.eos_token_id is None:
        raise ValueError("generation needs an eos_token_id (the tokenizer's EOS) to stop vLLM the way HF stops")
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    sampling = bool(config.do_sample)
    return {
        "temperature": float(config.temperature) if sampling else 0.0,  # vLLM: 0 is greedy
        "top_k": int(config.top_k or 0) if sampling else 0,  # 0: off in both
        "top_p": float(config.top_p if config.top_p is not None else 1.0) if sampling else 1.0,
        "min_p": float(config.min_p or 0.0) if sampling else 0.0,
        "repetition_penalty": float(config.repetition_penalty or 1.0),
        "max_tokens": int(config.max_new_tokens),
        "min_tokens": int(config.min_new_tokens or 0),
        "stop_token_ids": [int(t) for t in eos],  # the engine has no tokenizer: this is its only stop rule
        "ignore_eos": False,
        "skip_special_tokens": False,  # the caller decodes with its own tokenizer
    }


def parameter_dtype(model: nn.Module) -> str:
    """The dtype of a model's floating-point parameters, as vLLM names it."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


def weights_fingerprint(model: nn.Module) -> tuple[float, ...]:
    """A cheap summary of the weights that can change (the trainable ones, else all): sums and sums of squares."""
    params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    with torch.no_grad():
        total = torch.stack([p.detach().float().sum() for p in params]).sum()
        squares = torch.stack([p.detach().float().pow(2).sum() for p in params]).sum()
    return float(total), float(squares), len(params)


def export_weights(model: nn.Module, directory: str) -> None:
    """Write `model`'s weights to `directory` as a `save_pretrained` checkpoint (safetensors) vLLM can reload; a peft
    model is merged on a copy first (`merge_and_unload`), so the model being trained is left as it is."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(directory)


class ServerClient:
    """HTTP client of `hf-rlhf vllm-serve` (endpoints in `hf_rlhf.vllm_serve`), standard library only."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.url, self.timeout = url.rstrip("/"), timeout

    def request(self, path: str, payload: dict | None = None, timeout: float | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:  # the server's own one-line message
            detail = err.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError):
                pass
            raise RuntimeError(f"vLLM server {self.url}{path}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise ConnectionError(
                f"no vLLM server answering at {self.url} ({getattr(err, 'reason', err)}): start one with "
                "`hf-rlhf vllm-serve --model <model dir> --dtype <dtype> --port <port>` (docs/vllm.md) or set "
                "vllm_server_url"
            ) from None

    def health(self) -> dict:
        return self.request("/health")

    def wait_until_ready(self, timeout: float | None = None) -> dict:
        """`health()` once the server answers, polling for at most `timeout` seconds (its start-up takes a while)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                return self.request("/health", timeout=5)
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def generate(self, prompt_token_ids: list[list[int]], params: list[dict]) -> dict:
        return self.request("/generate", {"prompt_token_ids": prompt_token_ids, "sampling_params": params})

    def reload_weights(self, weights_path: str) -> dict:
        return self.request("/reload_weights", {"weights_path": os.path.abspath(weights_path)})


class ServerProcess:
    """`hf-rlhf vllm-serve` in a child process (its own process group) on a free loopback port, ready on return; for
    tests, benchmarks and notebooks. A context manager: leaving it stops the server and its engine's workers.

    Args:
        model (`str`): Model directory to serve. dtype (`str`): float32, bfloat16 or float16.
        python (`str`, *optional*): The interpreter that has vLLM (another environment); default: this one.
        extra_args: More `hf-rlhf vllm-serve` arguments (`--enforce_eager`, `--gpu_memory_utilization=0.2`, ...).
        log_path (`str`, *optional*): Where the server's output goes (default: discarded).
        timeout (`float`): Seconds its start-up may take.
    """

    def __init__(self, model, dtype, python=None, extra_args=(), log_path=None, timeout=600.0):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "hf_rlhf.vllm_serve", f"--model={model}", f"--dtype={dtype}"]
        command += [f"--port={port}", *([f"--python={python}"] if python else []), *extra_args]
        self.log_path = log_path
        self.log = open(log_path, "w") if log_path else None  # noqa: SIM115 (closed by `stop`)
        self.process = subprocess.Popen(
            command, stdout=self.log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.url = f"http://127.0.0.1:{port}"
        self.client = ServerClient(self.url, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health = self.client.request("/health", timeout=5)
                return
            except ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    where = f" (its output: {log_path})" if log_path else ""
                    raise RuntimeError(f"`hf-rlhf vllm-serve` for {model} did not start{where}") from None
                time.sleep(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and the engine processes it spawned
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class VLLMBackend(GenerationBackend):
    """Generation by vLLM, with the generating model's weights synced to it first.

    Args:
        mode (`str`): 'server' or 'colocate'.
        server_url, server_timeout: The `hf-rlhf vllm-serve` server (server mode).
        sync_dir (`str`, *optional*): Where weights are written for the engine to reload (default: a temporary
            directory, removed by `close()`).
        dtype (`str`, *optional*): The dtype vLLM must serve in (default: the model's parameter dtype).
        gpu_memory_utilization, enable_sleep_mode: colocate mode's engine.
    """

    name = "vllm"

    def __init__(
        self,
        mode: str = "server",
        server_url: str = "http://127.0.0.1:8000",
        server_timeout: float = 600.0,
        sync_dir: str | None = None,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = True,
    ):
        self.mode, self.dtype = mode, dtype
        self.gpu_memory_utilization, self.enable_sleep_mode = gpu_memory_utilization, enable_sleep_mode
        self.client = ServerClient(server_url, server_timeout) if mode == "server" else None
        self.engine = None  # colocate: created at the first generation, from the first model's weights
        self.own_sync_dir = sync_dir is None
        self.sync_dir = sync_dir or tempfile.mkdtemp(prefix="hf_rlhf_vllm_")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process of a launch writes its own copy: no races
            self.sync_dir = os.path.join(self.sync_dir, f"rank{os.environ.get('RANK', '0')}")
        self.synced: tuple[weakref.ref, tuple] | None = None  # the model (weak) and fingerprint vLLM holds
        self.sync_seconds: list[float] = []

    @classmethod
    def from_options(cls, options) -> VLLMBackend:
        return cls(
            mode=options.vllm_mode,
            server_url=options.vllm_server_url,
            server_timeout=options.vllm_server_timeout,
            sync_dir=options.vllm_sync_dir,
            dtype=options.vllm_dtype,
            gpu_memory_utilization=options.vllm_gpu_memory_utilization,
            enable_sleep_mode=options.vllm_enable_sleep_mode,
        )

    # ----------------------------------------------------------------------------------------- engine
    def start_engine(self, model: nn.Module) -> None:
        """colocate: the in-process engine on `model`'s weights (vLLM's engine core in this process)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # share this process's GPU, as TRL does
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("vllm_mode 'colocate' runs in a single process here: use vllm_mode 'server'")
        from .vllm_serve import Engine

        export_weights(model, self.sync_dir)
        self.engine = Engine(
            self.sync_dir,
            self.dtype or parameter_dtype(model),
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_sleep_mode=self.enable_sleep_mode,
        )
        self.synced = (weakref.ref(model), weights_fingerprint(model))

    def check_dtype(self, model: nn.Module) -> None:
        wanted, served = self.dtype or parameter_dtype(model), self.client.health()["dtype"]
        if served != wanted:
            raise ValueError(
                f"the vLLM server at {self.client.url} serves {served} but generation needs {wanted} (the model's "
                "parameters, or vllm_dtype): restart it with `--dtype " + wanted + "` or set vllm_dtype"
            )

    def sync(self, model: nn.Module) -> bool:
        """Make vLLM hold `model`'s current weights; returns whether they had to be written and reloaded."""
        if self.mode == "colocate" and self.engine is None:
            self.start_engine(model)
            return True
        fingerprint = weights_fingerprint(model)
        if self.synced is not None and self.synced[0]() is model and self.synced[1] == fingerprint:
            return False
        if self.synced is None and self.client is not None:
            self.check_dtype(model)
        start = time.perf_counter()
        export_weights(model, self.sync_dir)
        (self.client or self.engine).reload_weights(self.sync_dir)
        self.synced = (weakref.ref(model), fingerprint)
        self.sync_seconds.append(time.perf_counter() - start)
        return True

    # ------------------------------------------------------------------------------------- generation
    def generate(self, model, prompt_ids, config, seeds=None, batch_size=64) -> Generations:
        params = sampling_params(config)  # refused before anything is sent
        if seeds is None:  # drawn from torch's generator: a seeded run is reproducible
            seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),)).tolist()
        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(seeds)} seeds")
        requests = [{**params, "seed": int(s)} for s in seeds]
        prompts = [[int(t) for t in p] for p in prompt_ids]
        if self.engine is not None and self.enable_sleep_mode:
            self.engine.llm.wake_up()
        self.sync(model)
        out = (self.client or self.engine).generate(prompts, requests)
        if self.engine is not None and self.enable_sleep_mode:
            self.engine.llm.sleep(level=1)
        return Generations(out["token_ids"], out["logprobs"])

    def close(self) -> None:
        self.engine = None
        if self.own_sync_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)
            self.synced = None
