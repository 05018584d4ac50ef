"""jupyter_kernel_test 0.7's `KernelTests` against the installed kerneld kernelspec, with every
sample filled in (run by tests/jupyter/test_kernel_test.py under .venv-clients).

The samples are ipykernel's own (jupyter_kernel_test's test_ipykernel.py), with history
`range` added to its `tail` and `search` (ipykernel leaves `range` out: IPython answers a range
of the current session as session 0; the adapter echoes the number the client asked for).
"""

# jupyter_kernel_test reads its samples from class attributes:
# ruff: noqa: RUF012

from __future__ import annotations

import os

import jupyter_kernel_test

KERNEL = os.environ.get("KERNELD_JUPYTER_KERNEL", "kerneld-default")


class KerneldKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class KerneldIopubWelcomeTests(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = KERNEL
    support_iopub_welcome = True
