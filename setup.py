"""Build script: the Cython backend is an optional compiled extension."""
from setuptools import setup

setup()
