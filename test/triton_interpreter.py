"""Run a test module's function under Triton's CPU interpreter, in a fresh Python (no CUDA needed).

``TRITON_INTERPRET=1`` must be set before Triton's decorators run, so the kernels' checks run in a subprocess
that imports the test module and prints the function's JSON result.
"""
import json
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def interpreted(module: str, expression: str, timeout: float = 120.0):
    """Return the JSON value of `expression` (e.g. ``"check('cpu')"``) evaluated in `module` under the interpreter."""
    code = textwrap.dedent('''
        import importlib, json, os, sys
        sys.path[:0] = sys.argv[1].split(os.pathsep)
        print(json.dumps(eval(sys.argv[3], vars(importlib.import_module(sys.argv[2])))))
    ''')
    env = dict(os.environ, TRITON_INTERPRET='1', CUDA_VISIBLE_DEVICES='')
    # the helpers' folder and the test module's own (a sub-folder of it): `module` is the caller, imported already
    path = os.pathsep.join([HERE, os.path.dirname(os.path.abspath(sys.modules[module].__file__))])
    done = subprocess.run([sys.executable, '-c', code, path, module, expression], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
