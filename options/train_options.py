"""Training flags (optimiser, learning-rate schedule, logging and saving)."""
from .base_options import BaseOptions, str2bool


class TrainOptions(BaseOptions):
    def __init__(self):
        super().__init__()
        self.isTrain = True

    def initialize(self, parser):
        parser = super().initialize(parser)
        parser.add_argument('--optimizer', type=str, default='Adam', choices=('Adam', 'SGD', 'RMSprop'),
                            help='optimiser')
        parser.add_argument('--niter', type=int, default=1000, help='epochs at the starting learning rate')
        parser.add_argument('--niter_decay', type=int, default=0, help='epochs of linear decay (linear policy)')
        parser.add_argument('--lr_policy', type=str, default='step',
                            choices=('linear', 'step', 'plateau', 'cosine', 'cosine_warmup'),
                            help='learning-rate policy, stepped once per epoch')
        parser.add_argument('--lr_decay_iters', type=int, default=200, help='StepLR step size, in epochs')
        parser.add_argument('--lr', type=float, default=0.0001, help='initial learning rate')
        parser.add_argument('--continue_train', type=str2bool, default=False,
                            help='resume from the newest complete checkpoint in <checkpoints_dir>/<name> (model and '
                                 'optimizer of the same epoch) without naming the epoch; --load_iter N names one')
        parser.add_argument('--load_optimizers', type=str2bool, default=False,
                            help='also load SelfHDR_optimizer_<name>.pth when resuming')
        parser.add_argument('--weight_decay', type=float, default=0, help='weight decay')
        parser.add_argument('--beta1', type=float, default=0.9, help='Adam beta1')
        parser.add_argument('--beta2', type=float, default=0.999, help='Adam beta2')
        parser.add_argument('--momentum', type=float, default=0, help='SGD / RMSprop momentum')
        parser.add_argument('--alpha', type=float, default=0.99, help='RMSprop alpha')
        parser.add_argument('--print_freq', type=int, default=100, help='iterations between loss prints')
        parser.add_argument('--test_every', type=int, default=1000, help='epochs between validations')
        parser.add_argument('--save_epoch_freq', type=int, default=1, help='epochs between checkpoints')
        parser.add_argument('--deterministic', type=str2bool, default=False,
                            help='GPU runs: deterministic cuDNN algorithms (no autotuning) and kernels, so that a '
                                 'resumed run replays the uninterrupted one exactly; slower (the CPU replays exactly '
                                 'either way)')
        return parser
