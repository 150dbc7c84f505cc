"""Merging a bracket with a trained backbone: the network's inputs, the forward (padding, tiles, AMP), the result
and its classical (triangle-weight) counterpart. ``merge`` runs the whole pipeline: read, pre-align, linearise,
check the exposures, (align,) forward."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np

from photo.errors import MergeError
from photo.exposures import check_exposures_match_frames
from photo.frames import BracketFrames, load_bracket
from photo.prealign import corner_shift, prealign
from photo.response import Response
from photo.response_choice import (AUTO, LINEAR_RAW, choose_response, is_8bit, resolve_response_flag,
                                   save_response_to_file)
from util.colour import EPS_T, GAMMA

logger = logging.getLogger(__name__)


@dataclass
class MergeResult:
    """The merged radiance (H x W x 3 BGR float32, short exposure's scale) and how it was made."""

    hdr: np.ndarray
    bracket: BracketFrames
    network: str
    response: Response
    aligned: bool
    inputs: list[np.ndarray] = field(default_factory=list)  # frames as the network saw them (training gamma)
    # tone-mapped previews by (operator, exposure, shadows), so that the .png and the contact sheet share one
    previews: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def classical(self) -> np.ndarray:
        """Kalantari's triangle-weight merge of the same inputs (the classical anchor of specs/method.md); computed
        once (the preview, the comparison sheet and the contact sheet all use it)."""
        from util.colour import merge_colour_component

        return merge_colour_component(*self.inputs, self.bracket.times)


def _build_inputs(frames, times, gamma: float = GAMMA):
    """Per frame the network input ``cat([X ** 2.2 / (t + 1e-8), X])`` as a (1, 6, H, W) tensor; ``frames`` are
    already in the training encoding (``Response.to_training_ldr``)."""
    import torch

    inputs = []
    for x, t in zip(frames, times):
        x = np.asarray(x, dtype=np.float32)
        h = np.power(x, np.float32(gamma)) / np.float32(float(t) + EPS_T)
        six = np.concatenate([h, x], axis=2).transpose(2, 0, 1)  # (6, H, W): linear first, LDR second
        inputs.append(torch.from_numpy(np.ascontiguousarray(six)).unsqueeze(0))  # (1, 6, H, W)
    return inputs


def load_network(network: str, checkpoint, device, medium_gate: str = 'auto'):
    """The checkpoint's backbone, in eval mode on ``device``, followed by its medium gate when it has one
    (``medium_gate``: auto | on | off, models/medium_gate.py)."""
    from models.base_model import load_backbone_state
    from models.medium_gate import GateError, with_gate
    from models.networks import NETWORKS, define_network

    if network not in NETWORKS:
        raise MergeError(f"--network '{network}' is unknown; available: {', '.join(NETWORKS)}")
    try:
        net = define_network(network)
    except ImportError as exc:
        raise MergeError(f'--network {network}: backbone module {NETWORKS[network][0]} cannot be imported '
                         f'({exc})') from exc
    contents = load_backbone_state(net, str(checkpoint), device='cpu')  # CheckpointError names the file and keys
    try:
        net = with_gate(net.eval(), checkpoint, medium_gate, contents, network)
    except GateError as exc:
        raise MergeError(str(exc)) from None
    return net.eval().to(device)


def resolve_align(align: bool | str, network: str) -> bool:
    """``--align``: 'auto' aligns for the networks trained on aligned frames (FSHDR), as their training and test
    data are; 'on'/'off' or a bool force it."""
    from models.backbones import BACKBONES

    if isinstance(align, bool):
        return align
    if align not in ('auto', 'on', 'off'):
        raise MergeError(f"--align {align!r}: choose auto, on or off")
    if align == 'auto':
        return bool(network in BACKBONES and BACKBONES[network].aligned_input)
    return align == 'on'


def merge(inputs: Sequence, network: str, checkpoint, exposures: Sequence | None = None,
          exposures_in: str = 'seconds', response: str | Response = AUTO, device: str = 'cpu',
          tile: int | str = 'auto', tile_overlap: int = 32, align: bool | str = 'auto', strict_order: bool = False,
          trust_exposures: bool = False, save_response_to=None, prealign: bool = True, reference=None,
          net=None, amp: str = 'none', max_memory: float = 0, medium_gate: str = 'auto',
          channels_last: str | bool = 'auto', exposures_from: str = '--exposures') -> MergeResult:
    """Merge three exposures into HDR radiance with a trained backbone. See ``tools/merge_brackets.py`` for the behaviour.

    Raises :class:`MergeError` or :class:`util.hdr_io.ImageReadError` for bad inputs and
    :class:`models.base_model.CheckpointError` for a checkpoint that does not fit ``network``. ``net``: an
    already loaded backbone (batches load the checkpoint once). ``amp``: none|bf16|fp16|auto, the network's
    forward under autocast (as train.py/test.py ``--amp``); the merge arithmetic stays fp32. ``tile``: a tile side,
    0 for the whole image, or 'auto' (the whole image when it fits ``max_memory`` GB, 0: most of the available
    memory, and on a CPU has at most 768x768 pixels; else the largest tiles that fit; ``util.tiling.auto_tile``).
    ``medium_gate``: auto | on | off, the checkpoint's medium gate (models/medium_gate.py) when it has one, always, or never.
    ``channels_last``: auto | true | false (as train.py/test.py ``--channels_last``): auto = channels_last on a CPU
    with AMX; it converts ``net`` in place. ``exposures_from``: where ``exposures`` came from, for messages (a batch
    folder's exposure file).
    """
    import torch

    from models.base_model import resolve_amp, resolve_channels_last

    from models.backbones import BACKBONES
    from models.medium_gate import bracket_noise, reads_bracket_noise
    from util.tiling import MemoryBudgetError, auto_tile, is_out_of_memory, padded, tiled_forward

    if not isinstance(response, Response) and str(response).lower() not in ('estimate', AUTO):
        response = resolve_response_flag(response)
    if tile != 'auto' and (tile < 0 or (tile > 0 and not 0 <= tile_overlap < tile)):
        raise MergeError(f'--tile {tile} --tile_overlap {tile_overlap}: need tile >= 0 and 0 <= overlap < tile')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise MergeError(f'--device {device}: CUDA is not available on this machine; use --device cpu')
    align = resolve_align(align, network)
    if network in BACKBONES and BACKBONES[network].aligned_input and not align:
        logger.warning('%s was trained on aligned frames; --align off gives it unaligned ones', network)

    bracket = load_bracket(inputs, exposures, exposures_in, strict_order, reference, exposures_from)
    if bracket.kind == 'raw':
        given = response.name if isinstance(response, Response) else str(response)
        if given not in (f'gamma{GAMMA:g}', AUTO):
            logger.warning('--response %s ignored: RAW frames are decoded linear (%s)', given, bracket.paths[1])
        if save_response_to is not None:
            logger.warning('--save_response ignored: a RAW bracket has no camera response to save')
            save_response_to = None
        response = LINEAR_RAW
    frames, valid = bracket.frames, None
    if prealign:
        frames, valid = prealign_bracket(bracket, response if isinstance(response, Response) else None)
    if not isinstance(response, Response):  # 'auto'/'estimate': from this bracket (pre-aligned, inside every frame)
        response = choose_response(response, frames, bracket.times, bracket.paths, valid,
                                   bracket.bits == 8 if bracket.bits else is_8bit(bracket.frames))
        logger.info('camera response: %s (%s)', response.name, response.why)
    if save_response_to is not None:
        save_response_to_file(save_response_to, response)
    if not trust_exposures:
        check_exposures_match_frames(bracket.paths, bracket.frames, bracket.times, response,
                                     times_from=bracket.times_from)
    logger.info('frames (short, medium, long): %s; relative exposure times %s (from %s); response %s',
                ', '.join(map(str, bracket.paths)), ', '.join(f'{t:g}' for t in bracket.times),
                bracket.times_source, response.name)
    frames = [response.to_training_ldr(f) for f in frames]  # linearised, re-encoded with gamma 2.2
    if align:
        from util.align import align_frames

        frames = list(align_frames(*frames, bracket.times).frames)

    if net is None:
        net = load_network(network, checkpoint, device, medium_gate)
    # a gate that reads the whole bracket's noise takes the frames as shot: warps (pre-alignment, alignment) smooth
    # away the noise its estimate reads
    unwarped = [response.to_training_ldr(bracket.frames[i]) for i in (0, -1)] if reads_bracket_noise(net) else None
    xs = [x.to(device) for x in _build_inputs(frames, bracket.times)]
    multiple = BACKBONES[network].pad_multiple if network in BACKBONES else 0
    fn = padded(net, multiple=multiple, mode='release') if multiple else net
    height, width = frames[0].shape[:2]
    try:
        amp_dtype = resolve_amp(amp, torch.device(device))
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    if resolve_channels_last(channels_last, amp_dtype, torch.device(device)):
        net = net.to(memory_format=torch.channels_last)
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    if tile == 'auto':
        from models.medium_gate import extra_bytes_per_pixel

        per_pixel = BACKBONES[network].infer_bytes_per_pixel if network in BACKBONES else (16384, 16384)
        per_pixel = tuple(b + extra_bytes_per_pixel(net) for b in per_pixel)
        try:
            tile = auto_tile(height, width, per_pixel[0 if amp_dtype is None else 1], max_memory, tile_overlap,
                             multiple=multiple, device=device)
        except MemoryBudgetError as exc:
            raise MergeError(f'{bracket.paths[1]}: {exc}') from None
    autocast = torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.inference_mode(), autocast, bracket_noise(net, unwarped):
        try:
            out = tiled_forward(fn, xs, tile, tile_overlap)
        except ValueError as exc:  # e.g. a frame too small for the transformers' padding
            raise MergeError(f'{bracket.paths[1]}: {network} cannot process {width}x{height} frames ({exc})') from exc
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise MergeError(f'{bracket.paths[1]}: out of memory merging {width}x{height} frames with '
                             f'{f"--tile {tile}" if tile else "the whole image at once (--tile 0)"}: use --tile auto '
                             '(tiles chosen to fit the memory) or a smaller --tile, and close other programs or set '
                             '--max_memory to what this machine can spare') from None
    hdr = out[0].float().permute(1, 2, 0).cpu().numpy()  # (H, W, 3) BGR
    if not np.isfinite(hdr).all():
        raise MergeError(f'{checkpoint}: the network produced NaN/Inf values (broken checkpoint?)')
    if all(is_grey(f) for f in bracket.frames):
        # a grey bracket (replicated to 3 channels when read) has no colour: whatever hue the network gives it is
        # its own error, so the output is made neutral (each pixel's channel mean)
        hdr = np.repeat(hdr.mean(axis=2, keepdims=True), 3, axis=2)
        logger.info('grey frames: the merged HDR is made grey too (the mean of the network\'s three channels)')
    return MergeResult(hdr=np.ascontiguousarray(hdr, dtype=np.float32), bracket=bracket, network=network,
                       response=response, aligned=align, inputs=frames)


def is_grey(frame: np.ndarray) -> bool:
    """Whether an H x W x 3 frame has three equal channels (a grey image as read, replicated)."""
    return bool(np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2]))


def prealign_bracket(bracket: BracketFrames, response: Response | None):
    """Homography of each frame onto the medium one (photo.prealign); a frame that cannot be aligned is a
    warning and keeps its geometry."""
    lin_of = response.linear if response is not None else (lambda x: np.power(x, np.float32(GAMMA)))
    res = prealign(bracket.frames, [lin_of(f) for f in bracket.frames], bracket.times, reference=1)
    for i, why in res.failed.items():
        logger.warning('%s could not be pre-aligned to %s (%s); it keeps its own geometry (use --no_prealign '
                       'for tripod shots)', bracket.paths[i], bracket.paths[1], why)
    h, w = bracket.frames[1].shape[:2]
    for i in res.moved:
        logger.info('pre-aligned %s onto %s (corners moved up to %.1f px)', bracket.paths[i], bracket.paths[1],
                    corner_shift(res.homographies[i], h, w))
    return res.frames, (res.valid if res.moved else None)


_load_network = load_network  # the old private name (bench scripts)
