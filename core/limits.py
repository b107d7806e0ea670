"""The bounds of what a user may ask for: checked up front, as usage errors, by the command line and
the Python API alike."""

MAX_SEED = 2**63 - 1  # seeds feed torch.Generator.manual_seed and numpy; sample i uses seed + i
MAX_SAMPLES = 10_000  # samples are made a batch at a time and written at once, so memory stays flat; this bounds the disk
MAX_FRAMES = 1025  # 2 minutes at 8 fps, made by chaining `extend`
MAX_PROMPT_CHARS = 2000  # far beyond any caption; the model's context bounds the prompt's tokens too
MAX_STEPS = 10_000_000  # training steps
