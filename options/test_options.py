"""Test flags."""
from .base_options import BaseOptions, str2bool


class TestOptions(BaseOptions):
    def initialize(self, parser):
        parser = super().initialize(parser)
        parser.add_argument('--results_csv', type=str2bool, default=True,
                            help='also write per-scene metrics (CSV) and a summary (JSON)')
        parser.add_argument('--extra_metrics', type=str, nargs='*', default=[],
                            choices=('pu21', 'cvvdp', 'lpips'), help='optional metrics beyond the release\'s')
        parser.add_argument('--max_test_images', type=float, default=float('inf'),
                            help='evaluate at most this many scenes')
        return parser
