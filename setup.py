"""The one thing pyproject.toml cannot say yet without an experimental table: ptm's C extension.

ptm_cli/images/_resample.c is the fused resize-and-crop of the classifiers'
preprocessing. It is optional: where no C compiler is found, ptm installs
without it and preprocesses through Pillow, with the same numbers. Its
floating-point settings are the compiler's defaults, as Pillow's are.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ptm_cli.images._resample",
            sources=["ptm_cli/images/_resample.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
