"""InstructPix2Pix end to end: edit images from written instructions, make the paired data, train, evaluate, serve."""

__version__ = "0.1.0"


def __getattr__(name):
    # `from instruct_pix2pix import Editor` without importing torch and diffusers for `ip2p --help`.
    if name == "Editor":
        from instruct_pix2pix.editing import Editor

        return Editor
    raise AttributeError(name)


__all__ = ["Editor", "__version__"]
