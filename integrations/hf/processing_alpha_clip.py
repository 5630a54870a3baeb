"""Processors: images + masks / boxes / polygons / COCO RLE (or nothing) -> ``pixel_values`` + ``alpha_values``.

The geometry and the alpha normalisation are alpha-clip's own, :func:`alphaclip_core.prepare`
(ONE transform for an image and its alpha: crop, pad or squash), so an HF model sees exactly what
the open_clip model sees.

Rows: each (image, region) pair is one row of ``pixel_values [N, 3, S, S]`` and
``alpha_values [N, 1, S, S]``; an image without regions gives one whole-image row. With
``return_region_index=True`` the output also holds ``region_image_index [N]`` (which input image
each row came from); leave it off when passing the output straight to the model.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from transformers import CLIPTokenizer
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from alphaclip_core.alpha import prepare

__all__ = ["AlphaCLIPImageProcessor", "AlphaCLIPProcessor", "clip_tokenizer_from_open_clip"]

_REGION_KINDS = ("masks", "boxes", "polygons", "rles")


def _is_image_batch(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    return isinstance(images, torch.Tensor) and images.dim() == 4


class AlphaCLIPImageProcessor(BaseImageProcessor):
    """Images and their regions -> ``pixel_values`` (CLIP-normalised) and ``alpha_values`` (normalised alpha).

    Args:
        size: the model's input side S (square).
        mode: the paired geometry, ``crop`` (CLIP's resize + centre crop), ``pad`` (pad to a square,
            padding = background, then resize) or ``squash`` (resize ignoring the aspect ratio).
        image_mean, image_std: RGB normalisation (OpenAI CLIP's by default).
    """

    model_input_names = ["pixel_values", "alpha_values"]

    def __init__(self, size: int = 224, mode: str = "crop", image_mean: Sequence[float] = OPENAI_DATASET_MEAN,
                 image_std: Sequence[float] = OPENAI_DATASET_STD, **kwargs: Any) -> None:
        if isinstance(size, dict):  # transformers style {"height": S, "width": S} / {"shortest_edge": S}
            values = set(size.values())
            if len(values) != 1:
                raise ValueError(f"size: expected a square size, got {size}")
            size = values.pop()
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"size: expected a positive int (the square input side), got {size!r}")
        if mode not in ("crop", "pad", "squash"):
            raise ValueError(f"mode: expected 'crop', 'pad' or 'squash', got {mode!r}")
        super().__init__(**kwargs)
        self.size = size
        self.mode = mode
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, *args, **kwargs)

    def preprocess(self, images: Any, masks: Any = None, boxes: Any = None, polygons: Any = None, rles: Any = None,
                   *, mode: Optional[str] = None, return_tensors: Optional[str] = "pt",
                   return_region_index: bool = False, **unused: Any) -> BatchFeature:
        """Prepare images and their regions.

        Args:
            images: one image (PIL, numpy ``HxWx3`` uint8 / float in [0, 1], torch ``[3,H,W]``) or a list
                of them (or a ``[B,3,H,W]`` tensor).
            masks, boxes, polygons, rles: the regions, in each image's pixel frame, as
                :func:`alphaclip_core.prepare` takes them: masks ``[H,W]`` / ``[K,H,W]`` (bool, 0/1, uint8
                0/255, float in [0, 1]), boxes ``[4]`` / ``[K,4]`` xyxy pixels, COCO polygons, COCO RLE dicts.
                For ONE image they describe that image's regions; for a list of B images each must be None
                or a list of B entries (an entry None = no regions of that kind). No region at all = the
                whole image.
            mode: override the processor's geometry for this call.
            return_tensors: ``"pt"`` (or None, same): torch tensors.
            return_region_index: also return ``region_image_index [N]`` (long).
        Returns:
            :class:`~transformers.BatchFeature` with ``pixel_values [N,3,S,S]`` float32 and
            ``alpha_values [N,1,S,S]`` float32 in ``[-1.9231, 1.9231]``; N = total regions (an image
            without regions counts one).
        Raises:
            ValueError / TypeError naming the argument (and image) for empty, mis-sized or out-of-range
            masks, degenerate boxes, mismatched list lengths.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors: only 'pt' (torch) is supported, got {return_tensors!r}")
        unknown = {k for k in unused if k not in ("do_resize", "do_normalize", "do_rescale", "data_format")}
        if unknown:
            raise TypeError(f"AlphaCLIPImageProcessor got unexpected arguments {sorted(unknown)}")
        mode = mode or self.mode
        regions = dict(zip(_REGION_KINDS, (masks, boxes, polygons, rles)))
        if _is_image_batch(images):
            image_list = list(images)
            if not image_list:
                raise ValueError("images: got an empty list")
            per_image = []
            for kind, value in regions.items():
                if value is not None and (not isinstance(value, (list, tuple)) or len(value) != len(image_list)):
                    got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
                    raise ValueError(f"{kind}: for a list of {len(image_list)} images pass a list with one entry per "
                                     f"image (None for no regions), got {got}")
            for i in range(len(image_list)):
                per_image.append({k: (v[i] if v is not None else None) for k, v in regions.items()})
        else:
            image_list, per_image = [images], [regions]

        pixels, alphas, index = [], [], []
        for i, (image, reg) in enumerate(zip(image_list, per_image)):
            try:
                pix, alpha = prepare(image, mask=reg["masks"], box=reg["boxes"], polygon=reg["polygons"],
                                     rle=reg["rles"], size=self.size, mode=mode, mean=self.image_mean,
                                     std=self.image_std)
            except (ValueError, TypeError) as e:
                where = f"image {i}: " if len(image_list) > 1 else ""
                raise type(e)(f"{where}{e}") from None
            pixels.append(pix.expand(alpha.shape[0], -1, -1, -1))
            alphas.append(alpha)
            index.extend([i] * alpha.shape[0])
        data = {"pixel_values": torch.cat(pixels).contiguous(), "alpha_values": torch.cat(alphas)}
        if return_region_index:
            data["region_image_index"] = torch.tensor(index, dtype=torch.long)
        return BatchFeature(data=data)


def clip_tokenizer_from_open_clip(context_length: int = 77) -> CLIPTokenizer:
    """transformers' :class:`~transformers.CLIPTokenizer` with open_clip's (= OpenAI CLIP's) BPE vocabulary.

    Token ids equal open_clip's tokenizer's; open_clip pads with 0, this one with ``<|endoftext|>``
    (49407), which CLIP's end-token pooling and causal mask make irrelevant.
    """
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    vocab = dict(tok.encoder)
    vocab["<|startoftext|>"] = vocab.pop(tok.decoder[tok.sot_token_id])
    vocab["<|endoftext|>"] = vocab.pop(tok.decoder[tok.eot_token_id])
    merges = [pair for pair, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


class AlphaCLIPProcessor(ProcessorMixin):
    """:class:`AlphaCLIPImageProcessor` + a CLIP tokenizer.

    ``processor(text=[...], images=image, masks=..., boxes=...)`` returns ``input_ids``,
    ``attention_mask``, ``pixel_values`` and ``alpha_values``, ready for ``AlphaCLIPModel(**inputs)``.
    """

    def __init__(self, image_processor: Optional[AlphaCLIPImageProcessor] = None, tokenizer: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: Union[str, List[str], None] = None, masks: Any = None,
                 boxes: Any = None, polygons: Any = None, rles: Any = None, *, mode: Optional[str] = None,
                 return_tensors: Optional[str] = "pt", return_region_index: bool = False,
                 padding: Union[bool, str] = True, truncation: bool = True, **text_kwargs: Any) -> BatchFeature:
        """Tokenise ``text`` and prepare ``images`` with their regions (see
        :meth:`AlphaCLIPImageProcessor.preprocess`); at least one of them is required.

        Texts are padded to the longest and truncated to the context length (77) keeping the end
        token, like open_clip's tokenizer."""
        if images is None and text is None:
            raise ValueError("AlphaCLIPProcessor: pass images, text or both")
        if images is None and any(v is not None for v in (masks, boxes, polygons, rles)):
            raise ValueError("masks/boxes/polygons/rles: given without images")
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, padding=padding, truncation=truncation, return_tensors="pt",
                                       **text_kwargs))
        if images is not None:
            data.update(self.image_processor(images, masks=masks, boxes=boxes, polygons=polygons, rles=rles,
                                             mode=mode, return_tensors=return_tensors,
                                             return_region_index=return_region_index))
        return BatchFeature(data=data)

    @classmethod
    def from_open_clip(cls, model: torch.nn.Module, mode: str = "crop") -> "AlphaCLIPProcessor":
        """The processor matching an open_clip model: its input size and mean/std, open_clip's vocabulary."""
        from alphaclip_core.regions import preprocess_params

        params = preprocess_params(model)
        image_processor = AlphaCLIPImageProcessor(size=params["size"], mode=mode,
                                                  image_mean=params.get("mean", OPENAI_DATASET_MEAN),
                                                  image_std=params.get("std", OPENAI_DATASET_STD))
        return cls(image_processor, clip_tokenizer_from_open_clip(getattr(model, "context_length", 77)))

    @property
    def model_input_names(self) -> List[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))
