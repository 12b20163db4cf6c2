from setuptools import find_packages, setup

setup(
    name="nest-ssl",
    version="0.1.0",
    description="Lhotse-first, Kaldi-style NEST self-supervised pretraining of speech encoders",
    packages=find_packages(include=["nest_ssl", "nest_ssl.*"]),
    package_data={"nest_ssl": ["conf/*.yaml"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["nest-ssl=nest_ssl.cli:main"]},
)
