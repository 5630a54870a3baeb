"""diffusers pipelines whose image encoder is Alpha-CLIP: generation that follows a region.

:class:`AlphaCLIPImageVariationPipeline` is diffusers' ``StableDiffusionImageVariationPipeline`` and
:class:`AlphaCLIPShapEImg2ImgPipeline` is diffusers' ``ShapEImg2ImgPipeline``, each with ONE change:
the image encoder is the transformers integration's Alpha-CLIP vision model
(:class:`~alphaclip_integrations.hf.AlphaCLIPVisionModelWithProjection` /
:class:`~alphaclip_integrations.hf.AlphaCLIPVisionModel`) and reads an alpha map beside the image.
Everything else (scheduler loop, guidance, steps, generator, latents, output types, callbacks,
progress bar, offloading, ``save_pretrained`` / ``from_pretrained``) is the stock parent's code,
inherited, not copied.

How the region reaches the encoder without monkeypatching and without state on the pipeline:
``__call__`` turns ``image`` + ``mask=`` / ``box=`` / ``polygon=`` / ``rle=`` into
``pixel_values [N, 3, S, S]`` and ``alpha_values [N, 1, S, S]`` with the pipeline's
:class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor` (which calls the core's
:func:`alphaclip_core.prepare`: ONE geometric transform for image and alpha), concatenates them on
the channel axis into a ``[N, 4, S, S]`` tensor and hands that to the stock ``__call__`` as its
``image`` (the stock code accepts pre-processed tensors and only reads their batch size). The
overridden ``_encode_image`` splits the channels again and calls the encoder with
``alpha_values``. A ``[B, 3, S, S]`` tensor is taken as pre-processed ``pixel_values``, exactly as the
stock pipelines take it, with whole-image alpha unless ``alpha_values`` is given.

With a zero alpha conv the encoder computes plain CLIP for any alpha, so the pipeline reproduces the
stock one bit for bit (same encoder weights, same pixel values, same seed); the tests assert it.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Optional, Tuple

import numpy as np
import PIL.Image
import torch
from diffusers import ShapEImg2ImgPipeline, StableDiffusionImageVariationPipeline
from diffusers.models import AutoencoderKL, PriorTransformer, UNet2DConditionModel
from diffusers.pipelines.shap_e import ShapERenderer
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import HeunDiscreteScheduler, KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor

from alphaclip_integrations.hf import (AlphaCLIPImageProcessor, AlphaCLIPVisionModel,
                                       AlphaCLIPVisionModelWithProjection)

__all__ = ["AlphaCLIPImageVariationPipeline", "AlphaCLIPShapEImg2ImgPipeline", "processor_from_clip", "LIBRARY"]

logger = logging.getLogger(__name__)

#: the module name written into ``model_index.json`` for the Alpha-CLIP components; diffusers resolves it
#: from ``sys.modules`` (it is imported whenever these pipelines are) and finds their loading methods there
LIBRARY = "alphaclip_integrations.diffusers"
_ALPHA_COMPONENTS = (AlphaCLIPVisionModelWithProjection, AlphaCLIPVisionModel, AlphaCLIPImageProcessor)
_REGION_ARGS = ("mask", "box", "polygon", "rle")


def processor_from_clip(processor: Any, mode: str = "crop") -> AlphaCLIPImageProcessor:
    """The :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor` matching a stock
    ``CLIPImageProcessor``: same square input side (its crop size), mean and std; ``mode`` is the paired
    geometry (``crop`` = CLIP's resize + centre crop, ``pad``, ``squash``). An
    ``AlphaCLIPImageProcessor`` is copied with ``mode`` replaced."""
    if isinstance(processor, AlphaCLIPImageProcessor):
        return AlphaCLIPImageProcessor(size=processor.size, mode=mode, image_mean=processor.image_mean,
                                       image_std=processor.image_std)
    if not isinstance(processor, CLIPImageProcessor):
        raise TypeError(f"processor: expected a CLIPImageProcessor or AlphaCLIPImageProcessor, got "
                        f"{type(processor).__name__}")
    size = processor.crop_size if getattr(processor, "do_center_crop", True) else processor.size
    sides = {int(v) for k, v in dict(size).items() if k in ("height", "width", "shortest_edge")}
    if len(sides) != 1:
        raise ValueError(f"processor: the stock image processor's input is not square ({dict(size)})")
    return AlphaCLIPImageProcessor(size=sides.pop(), mode=mode, image_mean=processor.image_mean,
                                   image_std=processor.image_std)


class _AlphaEncoding:
    """What both pipelines add to their stock parent: image + region -> packed ``[N, 4, S, S]`` -> encoder.

    Subclasses set ``_encoder_name`` / ``_processor_name`` (the stock component names) and
    ``_encoder_class`` (the Alpha-CLIP model class that replaces the stock encoder).
    """

    _encoder_name = "image_encoder"
    _processor_name: str
    _encoder_class: type
    _stock_class: type

    # ------------------------------------------------------------------ construction
    def _check_alpha_components(self, image_encoder: Any, processor: Any) -> None:
        if not isinstance(image_encoder, self._encoder_class):
            raise TypeError(
                f"image_encoder: expected alphaclip_integrations.hf.{self._encoder_class.__name__}, got "
                f"{type(image_encoder).__name__}; build the pipeline with {type(self).__name__}.from_stock(...) or "
                "convert a stock folder with alphaclip_integrations.diffusers.convert_pipeline")
        if not isinstance(processor, AlphaCLIPImageProcessor):
            raise TypeError(
                f"{self._processor_name}: expected alphaclip_integrations.hf.AlphaCLIPImageProcessor (the paired "
                f"image + alpha transform), got {type(processor).__name__}; processor_from_clip() makes one from "
                "a CLIPImageProcessor")
        side = image_encoder.config.image_size
        if processor.size != side:
            raise ValueError(f"{self._processor_name}: size {processor.size} differs from the image encoder's "
                             f"input size {side}")

    def register_modules(self, **kwargs: Any) -> None:
        """diffusers' ``register_modules``, then the Alpha-CLIP components are recorded under
        :data:`LIBRARY` so that ``from_pretrained`` finds them (see the module docstring)."""
        super().register_modules(**kwargs)
        for name, module in kwargs.items():
            if isinstance(module, _ALPHA_COMPONENTS):
                self.register_to_config(**{name: (LIBRARY, type(module).__name__)})

    @classmethod
    def from_stock(cls, stock: Any, image_encoder: torch.nn.Module, *, mode: str = "crop"):
        """This pipeline from a loaded stock pipeline: its components, ``image_encoder`` in place of the
        stock encoder and :func:`processor_from_clip` of the stock processor (``mode``: crop/pad/squash).

        The components are shared with ``stock``, not copied.
        """
        parent = cls._stock_class
        if not isinstance(stock, parent):
            raise TypeError(f"stock: expected a {parent.__name__}, got {type(stock).__name__}")
        components = dict(stock.components)
        components[cls._encoder_name] = image_encoder
        components[cls._processor_name] = processor_from_clip(components[cls._processor_name], mode)
        params = inspect.signature(cls.__init__).parameters
        extra = {k: v for k, v in stock.config.items() if k in params and k not in components}
        return cls(**components, **extra)

    # ------------------------------------------------------------------ inputs
    @property
    def _alpha_processor(self) -> AlphaCLIPImageProcessor:
        return getattr(self, self._processor_name)

    def prepare_alpha_inputs(self, image: Any, mask: Any = None, box: Any = None, polygon: Any = None,
                             rle: Any = None, alpha_values: Optional[torch.Tensor] = None,
                             mode: Optional[str] = None) -> torch.Tensor:
        """``image`` + regions -> the tensor ``__call__`` hands to the stock loop.

        Args:
            image: a PIL image, numpy ``HxWx3`` (uint8 or float in [0, 1]), or a list of them; or a
                ``[B, 3, S, S]`` tensor of pre-processed ``pixel_values`` (the stock pipelines' tensor input).
            mask, box, polygon, rle: regions in the image's pixel frame, as :func:`alphaclip_core.prepare`
                takes them (mask ``[H, W]`` / ``[K, H, W]``; box ``[4]`` / ``[K, 4]`` xyxy pixels; COCO
                polygons; COCO RLE). K regions of one image give K rows. For a list of B images each is a
                list of B entries (None: no region of that kind). No region = the whole image.
            alpha_values: with a ``pixel_values`` tensor only: its normalised alpha ``[B, 1, S, S]`` in
                ``[-1.9231, 1.9231]``.
            mode: the paired geometry for this call (default: the processor's).
        Returns:
            ``[N, 4, S, S]`` float32: ``pixel_values`` (channels 0-2) and ``alpha_values`` (channel 3); or the
            ``[B, 3, S, S]`` tensor unchanged when it came without ``alpha_values`` (whole image, as stock).
        """
        regions = {k: v for k, v in zip(_REGION_ARGS, (mask, box, polygon, rle)) if v is not None}
        if isinstance(image, torch.Tensor):
            side = self._alpha_processor.size
            if image.ndim != 4 or image.shape[1] not in (3, 4) or tuple(image.shape[2:]) != (side, side):
                raise ValueError(f"image: a tensor is taken as pre-processed pixel_values [B, 3, {side}, {side}] "
                                 f"(as the stock pipeline takes it), got shape {list(image.shape)}; pass raw "
                                 "images as PIL or numpy")
            if regions:
                raise ValueError(f"{', '.join(regions)}: regions are given in the pixel frame of a raw image; with "
                                 "pre-processed pixel_values pass alpha_values [B, 1, S, S] instead")
            if alpha_values is None or image.shape[1] == 4:
                if alpha_values is not None:
                    raise ValueError("alpha_values: the [B, 4, S, S] image already holds its alpha (channel 3)")
                return image
            expected = (image.shape[0], 1, side, side)
            if not isinstance(alpha_values, torch.Tensor) or tuple(alpha_values.shape) != expected:
                got = list(alpha_values.shape) if isinstance(alpha_values, torch.Tensor) else type(alpha_values).__name__
                raise ValueError(f"alpha_values: expected a tensor of shape {list(expected)}, got {got}")
            return torch.cat([image, alpha_values.to(image)], dim=1)
        if alpha_values is not None:
            raise ValueError("alpha_values: only with pre-processed pixel_values; for a raw image pass mask=/box=")
        if isinstance(image, (list, tuple)) and not image:
            raise ValueError("image: got an empty list")
        if not isinstance(image, (PIL.Image.Image, np.ndarray, list, tuple)):
            raise TypeError(f"image: expected a PIL image, numpy HxWx3 array, a list of them, or pre-processed "
                            f"pixel_values [B, 3, S, S], got {type(image).__name__}")
        inputs = self._alpha_processor(image, masks=mask, boxes=box, polygons=polygon, rles=rle, mode=mode)
        return torch.cat([inputs["pixel_values"], inputs["alpha_values"]], dim=1)

    def _encoder_inputs(self, image: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What the stock ``_encode_image`` receives -> ``(pixel_values, alpha_values or None)``."""
        if not isinstance(image, torch.Tensor):  # called directly with raw images: whole-image alpha
            image = self.prepare_alpha_inputs(image)
        if image.shape[1] == 4:
            return image[:, :3], image[:, 3:]
        return image, None

    def _run_encoder(self, image: Any, device: torch.device) -> Any:
        """The Alpha-CLIP encoder's output for the (packed) image, on ``device`` in the encoder's dtype."""
        pixel_values, alpha_values = self._encoder_inputs(image)
        dtype = next(self.image_encoder.parameters()).dtype
        if alpha_values is not None:
            alpha_values = alpha_values.to(device=device, dtype=dtype)
        return self.image_encoder(pixel_values.to(device=device, dtype=dtype), alpha_values=alpha_values)


class AlphaCLIPImageVariationPipeline(_AlphaEncoding, StableDiffusionImageVariationPipeline):
    r"""Stable Diffusion image variations conditioned on Alpha-CLIP's embedding of an image region.

    ``StableDiffusionImageVariationPipeline`` with ``image_encoder`` an
    :class:`~alphaclip_integrations.hf.AlphaCLIPVisionModelWithProjection` and ``feature_extractor`` an
    :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor` (also used, as in stock, to prepare the
    generated images for the safety checker). Build it with :meth:`from_stock`, load a folder written by
    :func:`~alphaclip_integrations.diffusers.convert_pipeline` with ``from_pretrained``.

    Example::

        pipe = AlphaCLIPImageVariationPipeline.from_pretrained("sd-variations-alpha-clip")
        images = pipe(image, box=[40, 30, 200, 220], num_images_per_prompt=4,
                      generator=torch.Generator().manual_seed(0)).images
    """

    _processor_name = "feature_extractor"
    _encoder_class = AlphaCLIPVisionModelWithProjection
    _stock_class = StableDiffusionImageVariationPipeline

    def __init__(self, vae: AutoencoderKL, image_encoder: AlphaCLIPVisionModelWithProjection,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers,
                 safety_checker: Optional[StableDiffusionSafetyChecker], feature_extractor: AlphaCLIPImageProcessor,
                 requires_safety_checker: bool = True):
        self._check_alpha_components(image_encoder, feature_extractor)
        super().__init__(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                         safety_checker=safety_checker, feature_extractor=feature_extractor,
                         requires_safety_checker=requires_safety_checker)

    def _encode_image(self, image: Any, device: torch.device, num_images_per_prompt: int,
                      do_classifier_free_guidance: bool) -> torch.Tensor:
        """The stock ``_encode_image`` with the alpha passed to the encoder: ``[B', 1, D]`` embeddings,
        ``B' = N * num_images_per_prompt`` (x2 with guidance: zeros first, as stock)."""
        image_embeddings = self._run_encoder(image, device).image_embeds.unsqueeze(1)
        # from here on the stock layout: repeat per prompt, zero embedding as the unconditional half
        bs_embed, seq_len, _ = image_embeddings.shape
        image_embeddings = image_embeddings.repeat(1, num_images_per_prompt, 1)
        image_embeddings = image_embeddings.view(bs_embed * num_images_per_prompt, seq_len, -1)
        if do_classifier_free_guidance:
            image_embeddings = torch.cat([torch.zeros_like(image_embeddings), image_embeddings])
        return image_embeddings

    @torch.no_grad()
    def encode_region(self, image: Any, mask: Any = None, box: Any = None, polygon: Any = None, rle: Any = None,
                      *, alpha_values: Optional[torch.Tensor] = None, mode: Optional[str] = None) -> torch.Tensor:
        """Alpha-CLIP's image embedding of each region: ``[N, projection_dim]`` (not normalised), the
        vector the UNet is conditioned on. Arguments as :meth:`__call__`."""
        packed = self.prepare_alpha_inputs(image, mask, box, polygon, rle, alpha_values, mode)
        return self._run_encoder(packed, self._execution_device).image_embeds

    def __call__(self, image: Any, mask: Any = None, box: Any = None, polygon: Any = None, rle: Any = None,
                 *, alpha_values: Optional[torch.Tensor] = None, mode: Optional[str] = None, **kwargs: Any):
        """Generate variations of the region(s) of ``image``.

        Args:
            image: PIL image, numpy ``HxWx3`` or a list of them; or pre-processed ``pixel_values``
                ``[B, 3, S, S]`` (stock behaviour).
            mask, box, polygon, rle: the region(s), in the image's pixel frame (see
                :meth:`prepare_alpha_inputs`); none = the whole image. K regions of one image give K
                conditioning rows, each generating ``num_images_per_prompt`` images (region-major order).
            alpha_values: normalised alpha ``[B, 1, S, S]`` for a ``pixel_values`` tensor.
            mode: paired geometry for this call: ``crop`` (CLIP's, the stock default), ``pad`` (keeps
                regions near the border) or ``squash``; default the processor's.
            **kwargs: the stock ``StableDiffusionImageVariationPipeline.__call__`` arguments, unchanged:
                ``height``, ``width``, ``num_inference_steps``, ``guidance_scale``,
                ``num_images_per_prompt``, ``eta``, ``generator``, ``latents``, ``output_type``,
                ``return_dict``, ``callback``, ``callback_steps``.
        Returns:
            the stock output: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        Raises:
            ValueError / TypeError naming the argument for empty masks, boxes outside the image, mis-sized
            masks, wrong tensor shapes.
        """
        packed = self.prepare_alpha_inputs(image, mask, box, polygon, rle, alpha_values, mode)
        return super().__call__(packed, **kwargs)


class AlphaCLIPShapEImg2ImgPipeline(_AlphaEncoding, ShapEImg2ImgPipeline):
    r"""Shap-E image-to-3D conditioned on Alpha-CLIP's view of an image region.

    ``ShapEImg2ImgPipeline`` with ``image_encoder`` an :class:`~alphaclip_integrations.hf.AlphaCLIPVisionModel`
    and ``image_processor`` an :class:`~alphaclip_integrations.hf.AlphaCLIPImageProcessor`. Shap-E
    conditions its prior on the encoder's last hidden state (the patch tokens, ``[B, grid**2, width]``,
    class token dropped), which the alpha tower provides like CLIP's. Unlike the stock pipeline, a list
    of images conditions one row per image (stock keeps only the first image's tokens).
    """

    _processor_name = "image_processor"
    _encoder_class = AlphaCLIPVisionModel
    _stock_class = ShapEImg2ImgPipeline

    def __init__(self, prior: PriorTransformer, image_encoder: AlphaCLIPVisionModel,
                 image_processor: AlphaCLIPImageProcessor, scheduler: HeunDiscreteScheduler,
                 shap_e_renderer: ShapERenderer):
        self._check_alpha_components(image_encoder, image_processor)
        super().__init__(prior=prior, image_encoder=image_encoder, image_processor=image_processor,
                         scheduler=scheduler, shap_e_renderer=shap_e_renderer)

    def _encode_image(self, image: Any, device: torch.device, num_images_per_prompt: int,
                      do_classifier_free_guidance: bool) -> torch.Tensor:
        """The stock ``_encode_image`` with alpha: patch tokens ``[B', grid**2, width]``."""
        image_embeds = self._run_encoder(image, device)["last_hidden_state"][:, 1:, :].contiguous()
        # from here on the stock layout
        image_embeds = image_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            image_embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds])
        return image_embeds

    def __call__(self, image: Any, mask: Any = None, box: Any = None, polygon: Any = None, rle: Any = None,
                 *, alpha_values: Optional[torch.Tensor] = None, mode: Optional[str] = None, **kwargs: Any):
        """Generate a 3D asset from the region(s) of ``image``.

        Region arguments as :meth:`AlphaCLIPImageVariationPipeline.__call__`; ``**kwargs`` are the stock
        ``ShapEImg2ImgPipeline.__call__`` arguments (``num_images_per_prompt``, ``num_inference_steps``,
        ``generator``, ``latents``, ``guidance_scale``, ``frame_size``, ``output_type`` in
        pil/np/latent/mesh, ``return_dict``). Returns the stock ``ShapEPipelineOutput``.
        """
        packed = self.prepare_alpha_inputs(image, mask, box, polygon, rle, alpha_values, mode)
        return super().__call__(packed, **kwargs)

