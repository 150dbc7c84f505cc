"""Command-line value parsing shared by the options and the models' own flags."""


def str2bool(value):
    """The release's lenient boolean: 'yes', 'y', 'true', 't', '1' (any case) are true, anything else false."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ('yes', 'y', 'true', 't', '1')
