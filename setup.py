"""Only the C extension lives here (setuptools' pyproject ext-modules table is experimental);
all other metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[
    # XTS: the tweak arithmetic and aes-xts through libcrypto (libssl-dev);
    # hammerfs/luks/xts.py falls back to cryptography + numpy if it is not built.
    Extension("hammerfs.luks._xtsfast", sources=["src/hammerfs/luks/_xtsfast.c"],
              extra_compile_args=["-O2"], libraries=["crypto"]),
])
