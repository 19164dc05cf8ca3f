"""Packaging: `pip install .` gives the `llmgateway` command; `.[test]` adds what the tests need."""

from setuptools import find_packages, setup

setup(
    name="llmgateway",
    version="0.1.0",
    description="OpenAI-compatible LLM gateway: per-user API keys, limits and exact usage metering",
    python_requires=">=3.11",
    packages=find_packages(include=["llmgateway", "llmgateway.*", "handlers", "handlers.*"]),
    install_requires=[
        "tornado>=6.4,<7",
        "pycurl>=7.45",
        "APScheduler>=3.10,<4",
        "pymongo>=4.6",
        "redis>=5,<9",
    ],
    extras_require={
        "test": ["pytest>=9", "pytest-timeout>=2.3", "openai>=1.40", "ruff>=0.5", "mongomock"],
        "bench": ["py-spy>=0.3"],
    },
    entry_points={"console_scripts": ["llmgateway=llmgateway.cli:main"]},
)
