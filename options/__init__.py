"""Command-line options, CycleGAN style.

`BaseOptions` holds the flags shared by training and testing; `TrainOptions` and `TestOptions` add their own.
A model class (`models/<name>_model.py`) and a dataset class (`data/<name>_dataset.py`) can add or change flags
through their static `modify_commandline_options(parser, is_train)`; `BaseOptions.parse()` calls those hooks
after reading `--model` and `--dataset_name`.
"""
