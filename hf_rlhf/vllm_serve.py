"""`hf-rlhf vllm-serve`: a vLLM engine behind a small HTTP server, for hf_rlhf's `generation_backend: vllm`.

This file imports nothing but the standard library at the top and vLLM inside `Engine`, so it runs under any Python
that has vLLM, including a separate environment (on a CPU machine vLLM's build pins an older transformers than
hf_rlhf needs): `hf-rlhf vllm-serve --python /path/to/vllm-venv/bin/python ...` re-executes this very file with that
interpreter. `colocate` mode uses the same `Engine` in the training process.

Endpoints (JSON):

- `GET /health`: `{"status": "ok", "model", "dtype", "max_model_len", "vllm_version", "weights_version"}`.
- `POST /generate` `{"prompt_token_ids": [[int]], "sampling_params": [{SamplingParams fields}]}` (one per prompt)
  -> `{"token_ids": [[int]], "logprobs": [[float]], "finish_reasons": [str]}`: the generated tokens (a stop token
  included) and the sampler's log-probability of each (after temperature: `logprobs_mode="processed_logprobs"`).
- `POST /reload_weights` `{"weights_path": dir}`: load the safetensors in `dir` (a `save_pretrained` directory of the
  served architecture) into the running engine, then clear the prefix cache -> `{"seconds", "weights_version"}`.

The engine never reads the model's tokenizer or `generation_config.json` (`skip_tokenizer_init`,
`generation_config="vllm"`): prompts arrive as token ids and every sampling setting, EOS included, comes with the
request, so nothing is inherited (as `hf_rlhf.sampling` does for HF `generate`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

DTYPES = ("float32", "bfloat16", "float16")


class Engine:
    """A vLLM `LLM` that generates from token ids with per-request `SamplingParams` and reloads its weights from disk.

    Args:
        model (`str`): A model directory (safetensors and `config.json`; no tokenizer needed).
        dtype (`str`): One of `DTYPES`, always explicit (vLLM's `auto` would serve a float32 checkpoint in bfloat16).
        max_model_len (`int`, *optional*): Prompt plus completion length at most (default: the model's).
        seed (`int`): The engine's seed (each request carries its own `seed` too).
        **engine_kwargs: Passed to `vllm.LLM` (`gpu_memory_utilization`, `tensor_parallel_size`, `enable_sleep_mode`).
    """

    def __init__(self, model: str, dtype: str, max_model_len: int | None = None, seed: int = 0, **engine_kwargs):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        import vllm

        self.model, self.dtype, self.weights_version = model, dtype, 0
        self.vllm_version = vllm.__version__
        self.llm = vllm.LLM(
            model=model,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            skip_tokenizer_init=True,
            generation_config="vllm",
            logprobs_mode="processed_logprobs",
            **{k: v for k, v in engine_kwargs.items() if v is not None},
        )
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def generate(self, prompt_token_ids: list[list[int]], sampling_params: list[dict]) -> dict[str, list]:
        """One completion per prompt; `sampling_params[i]` are `vllm.SamplingParams` keyword arguments."""
        from vllm import SamplingParams

        if len(prompt_token_ids) != len(sampling_params):
            raise ValueError(
                f"{len(prompt_token_ids)} prompts but {len(sampling_params)} sampling_params: give one per prompt"
            )
        params = [SamplingParams(**{**p, "n": 1, "logprobs": 0, "detokenize": False}) for p in sampling_params]
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids], sampling_params=params, use_tqdm=False
        )
        token_ids, logprobs, reasons = [], [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            token_ids.append(ids)
            logprobs.append([float(step[t].logprob) for t, step in zip(ids, completion.logprobs, strict=True)])
            reasons.append(completion.finish_reason)
        return {"token_ids": token_ids, "logprobs": logprobs, "finish_reasons": reasons}

    def reload_weights(self, weights_path: str) -> dict[str, float]:
        """Load the safetensors of `weights_path` into every worker (the one sync path vLLM's CPU build supports in
        its default multi-process mode), then drop cached prefixes computed with the old weights."""
        if not os.path.isdir(weights_path):
            raise ValueError(f"weights_path {weights_path!r} is not a directory")
        start = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_path})
        self.llm.reset_prefix_cache()
        self.weights_version += 1
        return {"seconds": time.perf_counter() - start, "weights_version": self.weights_version}

    def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.model,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "vllm_version": self.vllm_version,
            "weights_version": self.weights_version,
        }


def make_handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    routes = {
        "/generate": lambda body: engine.generate(body["prompt_token_ids"], body["sampling_params"]),
        "/reload_weights": lambda body: engine.reload_weights(body["weights_path"]),
    }

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self.reply(200, engine.health())
            else:
                self.reply(404, {"error": f"no endpoint GET {self.path}"})

        def do_POST(self):  # noqa: N802
            route = routes.get(self.path)
            if route is None:
                self.reply(404, {"error": f"no endpoint POST {self.path}"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self.reply(200, route(body))
            except KeyError as err:
                self.reply(400, {"error": f"{self.path}: missing field {err}"})
            except (ValueError, TypeError) as err:
                self.reply(400, {"error": f"{self.path}: {err}"})

        def log_message(self, format, *args):  # one line per request on stderr, no request bodies
            sys.stderr.write(f"vllm-serve: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    return Handler


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-rlhf vllm-serve", description=main.__doc__)
    parser.add_argument("--model", required=True, help="Model directory to serve (safetensors + config.json).")
    parser.add_argument("--dtype", required=True, choices=DTYPES, help="Weights and compute dtype (always explicit).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: loopback only).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    parser.add_argument("--max_model_len", type=int, default=None, help="Prompt + completion tokens at most.")
    parser.add_argument("--seed", type=int, default=0, help="The engine's seed.")
    parser.add_argument("--gpu_memory_utilization", type=float, default=None, help="vLLM's share of GPU memory.")
    parser.add_argument("--tensor_parallel_size", type=int, default=None, help="GPUs per model (vLLM).")
    parser.add_argument(
        "--enforce_eager", action="store_true", default=None, help="No graph compilation (faster start; CPU tests)."
    )
    parser.add_argument(
        "--python",
        default=os.environ.get("HF_RLHF_VLLM_PYTHON"),
        help="Python interpreter that has vLLM (another venv); default: $HF_RLHF_VLLM_PYTHON, else this one.",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """`hf-rlhf vllm-serve`: serve a model with vLLM over HTTP for `generation_backend: vllm` (`vllm_mode: server`)."""
    args = make_parser().parse_args(argv)
    # not realpath: a venv's interpreter is a symlink to the one it was made from
    if args.python and os.path.abspath(args.python) != os.path.abspath(sys.executable):
        if not os.access(args.python, os.X_OK):
            raise SystemExit(f"vllm-serve: --python {args.python!r} is not an executable interpreter")
        forwarded = [
            f"--{k}" if v is True else f"--{k}={v}" for k, v in vars(args).items() if v is not None and k != "python"
        ]
        env = {k: v for k, v in os.environ.items() if k != "HF_RLHF_VLLM_PYTHON"}  # the re-executed one serves
        os.execve(args.python, [args.python, os.path.abspath(__file__), *forwarded], env)
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise SystemExit(
            "vllm-serve: vLLM is not importable by this Python: install it (`pip install hf_rlhf[vllm]` on CUDA) or "
            "point --python / HF_RLHF_VLLM_PYTHON at an environment that has it (docs/vllm.md)"
        ) from None
    engine = Engine(
        args.model,
        args.dtype,
        args.max_model_len,
        args.seed,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager,
    )
    server = HTTPServer((args.host, args.port), make_handler(engine))
    print(f"vllm-serve: {args.model} ({args.dtype}) on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # vLLM's workers are spawned: they re-import this file, which must not serve again
    main()
