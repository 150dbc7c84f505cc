"""Set the consistency clamps of a gated checkpoint (models/medium_gate.py) without training the gate again.

    python tools/set_gate_clamp.py pretrained_models/fshdr_long_na_gate/SelfHDR_model_1.pth \
        --consistency 1.5 --consistency_chroma 1.2 --band_noise weak_texture_modelled --out /tmp/SelfHDR_model_1.pth

The clamp acts at inference only (the gate trains without it), so it is a setting of the checkpoint, chosen on a
validation split (bench/medium_gate.py). The backbone and the gate's weights are copied unchanged; the values set
and the reason given with ``--why`` are recorded in the gate's entry. The output is written atomically.
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from models.backbones import NAMES  # noqa: E402
from models.base_model import CheckpointError, atomic_torch_save, checkpoint_read_error  # noqa: E402
from models.medium_gate import (BAND_NOISE, GATE_KEY, GATE_VERSION, fusion_prior_problem,  # noqa: E402
                                fusion_window_problem, read_gate, witness_clamp_refusal)

FLAGS = ('consistency', 'consistency_chroma', 'short_consistency', 'consistency_fallback', 'long_consistency')
SWITCHES = ('long_within_medium', 'bracket_noise')  # on / off on the command line, true / false in the entry
SETTINGS = FLAGS + ('band_noise', 'fusion_window', 'fusion_prior') + SWITCHES  # every entry this tool may set


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='a checkpoint with a medium gate (tools/train_gate.py)')
    p.add_argument('--consistency', type=float, help='the clamp, in noise sigmas (0: none); unchanged if omitted')
    p.add_argument('--consistency_chroma', type=float,
                   help='the colour room, in times the clamp (0: per-channel clamp); unchanged if omitted')
    p.add_argument('--short_consistency', type=float,
                   help='hold the medium frame\'s clipped pixels to the aligned short frame\'s noise band, within this '
                        'many sigmas, where the two frames agree (0: off); needs --network, and a backbone that '
                        'takes aligned frames (an unaligned short frame would bring its ghosts)')
    p.add_argument('--consistency_fallback', type=float,
                   help='where the output strays this many sigmas from the medium frame, it becomes that frame; '
                        'linear from the clamp on (0, or not above --consistency: off)')
    p.add_argument('--long_consistency', type=float,
                   help='hold the output to the aligned long frame\'s noise band, within this many sigmas, where '
                        'that frame is well exposed, agrees with the medium frame and is 3 times cleaner (0: off); '
                        'needs --network, and a backbone that takes aligned frames')
    p.add_argument('--band_noise', choices=BAND_NOISE,
                   help='how the medium clamp estimates the frame\'s noise: weak_texture_modelled (gates made since '
                        'round 3\'s eighteenth session: no band above 1.5 times a physical noise curve under all the '
                        'bands), weak_texture_capped (since the seventeenth), weak_texture (since the fifteenth) or '
                        'robust (before: reads texture as noise on clean frames); unchanged if omitted')
    p.add_argument('--fusion_window', type=int,
                   help='before the clamp, fuse the output with the medium frame (the share of its deviation the '
                        'frame\'s noise explains, over this many pixels a side; odd; 0: off); unchanged if omitted')
    p.add_argument('--fusion_prior', type=float,
                   help='the weight (0 to 1) of the image\'s mean in the fusion\'s estimate of the output\'s own error '
                        '(gates made since round 3\'s twenty-second session: 0.5; 0: the local estimate alone, as '
                        'older gates); unchanged if omitted')
    p.add_argument('--long_within_medium', choices=('on', 'off'),
                   help='on: after the long frame\'s clamp, the medium frame\'s clamp again, so the long frame moves '
                        'the output within the medium band only (gates made since round 3\'s seventeenth session); '
                        'off: as gates of version 6 ran; unchanged if omitted (a version 6 gate: off)')
    p.add_argument('--bracket_noise', choices=('on', 'off'),
                   help='on: the medium band\'s noise is also capped by the estimates of the bracket\'s other frames '
                        '(models.medium_gate.bracket_noise_bounds; gates made since round 3\'s twentieth session); '
                        'unchanged if omitted (older gates: off)')
    p.add_argument('--network', choices=NAMES, help='the checkpoint\'s backbone (checked with --short_consistency '
                                                    'and --long_consistency)')
    p.add_argument('--why', default='', help='recorded in the gate entry as clamp_chosen_on')
    p.add_argument('--out', required=True, help='where to write the result (may be the input)')
    args = p.parse_args(argv)
    if all(getattr(args, flag) is None for flag in SETTINGS):
        print(f'error: nothing to set (give at least one of {", ".join("--" + f for f in SETTINGS)})',
              file=sys.stderr)
        return 2
    for flag in FLAGS:
        value = getattr(args, flag)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            print(f'error: --{flag} must be a number >= 0', file=sys.stderr)
            return 2
    for value, problem_of in ((args.fusion_window, fusion_window_problem), (args.fusion_prior, fusion_prior_problem)):
        problem = None if value is None else problem_of(value)
        if problem:
            print(f'error: --{problem}', file=sys.stderr)
            return 2
    for frame in ('short', 'long'):
        if getattr(args, f'{frame}_consistency'):
            if args.network not in NAMES:
                print(f'error: --{frame}_consistency needs --network (one of {", ".join(NAMES)})', file=sys.stderr)
                return 2
            refusal = witness_clamp_refusal(args.network, frame)
            if refusal:
                print(f'error: --{frame}_consistency: {refusal}', file=sys.stderr)
                return 2
    try:
        try:
            checkpoint = torch.load(args.checkpoint, map_location='cpu', weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:  # a foreign or broken file: one line
            raise CheckpointError(checkpoint_read_error(args.checkpoint, exc)) from None
        if read_gate(args.checkpoint, checkpoint) is None:
            raise CheckpointError(f'{args.checkpoint}: no medium gate to set (train one with tools/train_gate.py)')
        if args.network:  # the backbone must be the one named: the witness frames' clamps are refused for others
            from models.base_model import load_backbone_state
            from models.networks import define_network

            load_backbone_state(define_network(args.network), args.checkpoint)
        entry = checkpoint[GATE_KEY]
        for flag in SETTINGS:
            if getattr(args, flag) is not None:
                value = getattr(args, flag)
                entry[flag] = value == 'on' if flag in SWITCHES else value
        entry['version'] = GATE_VERSION  # older code refuses it rather than running it without these settings
        if args.network:
            entry['network'] = args.network
        if args.why:
            entry['clamp_chosen_on'] = args.why
        atomic_torch_save(checkpoint, args.out)
        gate = read_gate(args.out)
    except (CheckpointError, OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if gate.idle_fusion:
        print(f'warning: fusion_window {gate.fusion_window} acts with the clamp only, and consistency is 0',
              file=sys.stderr)
    if gate.idle_fallback:
        print(f'warning: consistency_fallback {gate.fallback:g} is not above consistency {gate.consistency:g}, so '
              'it does nothing', file=sys.stderr)
    print(f'{args.out}: consistency {gate.consistency:g}, consistency_chroma {gate.chroma:g}, '
          f'short_consistency {gate.short_consistency:g}, long_consistency {gate.long_consistency:g} '
          f'(within the medium band: {"on" if gate.long_within_medium else "off"}), '
          f'consistency_fallback {gate.fallback:g}, '
          f'band_noise {gate.band_noise}, fusion_window {gate.fusion_window}, fusion_prior {gate.fusion_prior:g}, '
          f'bracket_noise {"on" if gate.bracket_noise else "off"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
