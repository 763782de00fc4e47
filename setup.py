"""The one thing pyproject.toml cannot say yet without an experimental table: ptm's C extension.

ptm_cli/_resample.c is the fused resize-and-crop of the classifiers'
preprocessing. It is optional: where no C compiler is found, ptm installs
without it and preprocesses through Pillow, with the same numbers.
-ffp-contract=off keeps the float32 normalisation free of fused
multiply-adds, as torchvision's is.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ptm_cli._resample",
            sources=["ptm_cli/_resample.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
