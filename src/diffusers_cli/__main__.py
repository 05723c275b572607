"""`python -m diffusers_cli` is `diffuse` (and what torchrun launches)."""

from diffusers_cli.cli import app

if __name__ == "__main__":
    app(prog_name="diffuse")
