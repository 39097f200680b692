"""Reports: the equal-compute benchmark (``run_bench``) and the demo page (``run_demo``).

    from patchforcing.report import run_bench, run_demo, BenchSettings, DemoSettings
    run_demo("demo")                                         # demo/index.html, about 10 min on 2 CPU cores
    run_bench("bench", BenchSettings(num_samples=1000))      # bench/results.md
"""

from patchforcing.report.bench import NETWORKS, BenchSettings, run_bench
from patchforcing.report.demo import DemoSettings, run_demo

__all__ = ["NETWORKS", "BenchSettings", "DemoSettings", "run_bench", "run_demo"]
