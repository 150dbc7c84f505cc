"""Which camera response a bracket gets: the ``--response``/``--gamma`` flags, the linear identity of RAW frames,
and the estimate from the bracket itself."""
from __future__ import annotations

import logging
import math

from photo.errors import MergeError
from photo.response import Response, ResponseError, estimate_response, gamma_table, resolve_response, save_response
from util.colour import GAMMA

logger = logging.getLogger(__name__)


LINEAR_RAW = Response('linear (RAW)', gamma_table(1.0))  # identity: RAW frames are already linear


def resolve_response_flag(spec) -> Response:
    try:
        return resolve_response(str(spec))
    except ResponseError as exc:
        raise MergeError(f'--response: {exc}') from exc


def estimate_from_bracket(frames, times, name, valid=None) -> Response:
    try:
        table = estimate_response(frames, times, valid=valid)
    except ResponseError as exc:
        raise MergeError(f'{name}: --response estimate failed: {exc}') from exc
    return Response('estimate', table)


def save_response_to_file(path, response: Response) -> None:
    try:
        save_response(path, response.table)
    except (ResponseError, OSError) as exc:
        raise MergeError(f'--save_response {path}: {exc}') from exc
    logger.info('camera response (%s) saved to %s', response.name, path)


def response_flag(args) -> str:
    """The response named by the ``--response``/``--gamma`` flags of ``args`` (gamma 2.2 when neither)."""
    if args.gamma is not None and args.response is not None:
        raise MergeError('give either --response or --gamma, not both')
    if args.gamma is not None:
        if not (math.isfinite(args.gamma) and args.gamma > 0):
            raise MergeError(f'--gamma must be a positive number, got {args.gamma}')
        return f'gamma{args.gamma:g}'
    return args.response if args.response is not None else f'gamma{GAMMA:g}'
