"""The alpha LLaVA processor: prompts with ``<image>`` + images + masks/boxes -> model inputs.

Images and regions go through alpha-clip's :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor`
(ONE geometry for an image and its alpha). Each (image, region) pair is one image row; an image
without regions is one whole-image row. The prompts must hold one ``<image>`` placeholder per row,
in order; each placeholder is expanded to the number of image tokens LLaVA inserts there
(``(S // patch)**2`` for LLaVA-1.5's ``default`` strategy), as transformers' ``LlavaProcessor`` does.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

from PIL import Image
from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessorMixin

from alphaclip_integrations.hf import AlphaCLIPImageProcessor

from .inputs import alpha_threshold_value, binarize_alpha, rgba_alpha

__all__ = ["AlphaLlavaProcessor"]

_UNSET: Any = object()


def _split_rgba(images: Any, masks: Any, *other_regions: Any) -> Tuple[Any, Any]:
    """RGBA (or LA) PIL images -> their RGB part, with their alpha channel as the region mask."""
    single = not isinstance(images, (list, tuple))
    image_list = [images] if single else list(images)
    if not any(isinstance(im, Image.Image) and im.mode in ("RGBA", "LA", "PA") for im in image_list):
        return images, masks
    if masks is not None or any(r is not None for r in other_regions):
        raise ValueError("images: RGBA images carry their region in their alpha channel; do not pass masks, boxes, "
                         "polygons or rles with them (convert the images to RGB to give regions separately)")
    rgb, alphas = [], []
    for i, image in enumerate(image_list):
        rgb_image, alpha = rgba_alpha(image, i) if isinstance(image, Image.Image) else (image, None)
        rgb.append(rgb_image)
        alphas.append(alpha)
    return (rgb[0], alphas[0]) if single else (rgb, alphas)


class AlphaLlavaProcessor(ProcessorMixin):
    """Tokenizer + :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor` for an alpha LLaVA.

    Args:
        image_processor: the alpha image processor (its ``size`` is the tower's input size).
        tokenizer: the language model's tokenizer; it must know ``image_token`` as one token.
        patch_size: the vision tower's patch size.
        vision_feature_select_strategy: ``'default'`` (CLS dropped, LLaVA-1.5) or ``'full'``.
        chat_template: optional chat template (as in ``LlavaProcessor``).
        image_token: the placeholder, ``<image>``.
        num_additional_image_tokens: tokens the tower adds besides the patches (1: CLIP's CLS).
        alpha_threshold: ``None`` (default): soft alpha edges after the resize, as the reference's
            training data and its ImageNet-S evaluation prepare masks; ``"demo"``: the reference LLaVA
            demo's and VQA loader's hard threshold (foreground only where the resized mask exceeds
            :data:`~alphaclip_integrations.llava.inputs.DEMO_ALPHA_THRESHOLD` = 0.98648, else
            background); or a float in (0, 1). Saved with the processor.
    """

    def __init__(self, image_processor: Optional[AlphaCLIPImageProcessor] = None, tokenizer: Any = None,
                 patch_size: Optional[int] = None, vision_feature_select_strategy: str = "default",
                 chat_template: Optional[str] = None, image_token: str = "<image>",
                 num_additional_image_tokens: int = 1, alpha_threshold: Any = None, **kwargs: Any) -> None:
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy: expected 'default' or 'full', got "
                             f"{vision_feature_select_strategy!r}")
        alpha_threshold_value(alpha_threshold)
        self.alpha_threshold = alpha_threshold
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        ids = tokenizer.encode(self.image_token, add_special_tokens=False) if tokenizer is not None else [None]
        if len(ids) != 1:
            raise ValueError(f"tokenizer: the image token {self.image_token!r} must be one token, it encodes to {ids}; "
                             "add it with tokenizer.add_tokens([...], special_tokens=True)")
        self.image_token_id = ids[0]
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image row takes in the prompt (LLaVA-1.5 L/14@336: 576)."""
        if self.patch_size is None:
            raise ValueError("patch_size: not set; pass the vision tower's patch size to the processor")
        n = (self.image_processor.size // self.patch_size) ** 2 + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n

    def __call__(self, images: Any = None, text: Union[str, List[str], None] = None, masks: Any = None,
                 boxes: Any = None, polygons: Any = None, rles: Any = None, *, mode: Optional[str] = None,
                 alpha_threshold: Any = _UNSET, padding: Union[bool, str] = True,
                 return_tensors: Optional[str] = "pt", **text_kwargs: Any) -> BatchFeature:
        """Tokenise prompts and prepare images with their regions.

        Args:
            images: one image or a list (PIL, numpy ``HxWx3``, torch ``[3, H, W]``), or None for text only.
                An RGBA PIL image's alpha channel is its region (255 = region), as in the original-LLaVA
                path.
            text: one prompt or a list; together they hold one ``<image>`` per image row.
            masks, boxes, polygons, rles: regions as :class:`AlphaCLIPImageProcessor` takes them (for a
                list of images, a list with one entry per image; an image with K regions gives K rows).
                No region = the whole image.
            mode: override the image processor's geometry (``crop``/``pad``/``squash``).
            alpha_threshold: override the processor's ``alpha_threshold`` for this call.
            padding, text_kwargs: passed to the tokenizer.
        Returns:
            ``input_ids``, ``attention_mask`` and, with images, ``pixel_values [N, 3, S, S]`` and
            ``alpha_values [N, 1, S, S]`` (normalised, in ``[-1.9231, 1.9231]``).
        Raises:
            ValueError: no text; regions without images; the number of ``<image>`` placeholders differs
                from the number of image rows.
        """
        if text is None:
            raise ValueError("text: required (prompts with one <image> placeholder per image row)")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors: only 'pt' is supported, got {return_tensors!r}")
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text: expected a string or a list of strings")
        placeholders = sum(t.count(self.image_token) for t in texts)
        data = {}
        if images is None:
            if any(v is not None for v in (masks, boxes, polygons, rles)):
                raise ValueError("masks/boxes/polygons/rles: given without images")
            if placeholders:
                raise ValueError(f"text: holds {placeholders} {self.image_token} placeholder(s) but no images were given")
        else:
            images, masks = _split_rgba(images, masks, boxes, polygons, rles)
            data.update(self.image_processor(images, masks=masks, boxes=boxes, polygons=polygons, rles=rles,
                                             mode=mode, return_tensors="pt"))
            threshold = self.alpha_threshold if alpha_threshold is _UNSET else alpha_threshold
            data["alpha_values"] = binarize_alpha(data["alpha_values"], threshold)
            rows = data["pixel_values"].shape[0]
            if rows != placeholders:
                raise ValueError(f"text: holds {placeholders} {self.image_token} placeholder(s) but the images and "
                                 f"their regions give {rows} image row(s) (one row per region, one per image "
                                 "without regions); put one placeholder per row")
            expanded = self.image_token * self.num_image_tokens
            texts = [t.replace(self.image_token, expanded) for t in texts]
        data.update(self.tokenizer(texts, padding=padding, return_tensors="pt", **text_kwargs))
        return BatchFeature(data=data)

    @property
    def model_input_names(self) -> List[str]:
        names = list(self.tokenizer.model_input_names) + list(self.image_processor.model_input_names)
        return list(dict.fromkeys(names))
