"""What agent code expects to import is in the runtime, and works under `default` (issue 15).

E2B's default sandbox template and agent code reach for scipy, scikit-learn, seaborn, tqdm,
pillow and requests next to numpy/pandas/matplotlib. Each one is imported and used in a
confined `default` kernel; `requests` also shows the profile at work: it imports, and a request
fails because `default` grants no network (positive control: the error is a connection error
raised by the kernel's own attempt, not an ImportError).
"""

from __future__ import annotations

import os

import pytest

from kerneld import KernelManager

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.sandbox,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (confined kernels)")]

USES = {
    "scipy": "import scipy.linalg, numpy as np\n"
             "float(scipy.linalg.solve(np.eye(3) * 2, np.ones(3)).sum())",
    "sklearn": "from sklearn.linear_model import LinearRegression\nimport numpy as np\n"
               "x = np.arange(20.0).reshape(-1, 1)\n"
               "round(float(LinearRegression().fit(x, 3 * x.ravel() + 1).coef_[0]), 6)",
    "seaborn": "import seaborn as sns, pandas as pd, io\n"
               "ax = sns.barplot(data=pd.DataFrame({'k': list('ab'), 'v': [1, 2]}), x='k', y='v')\n"
               "buf = io.BytesIO(); ax.figure.savefig(buf, format='png'); len(buf.getvalue()) > 0",
    "tqdm": "from tqdm import tqdm\nsum(tqdm(range(100), disable=True))",
    "PIL": "from PIL import Image\nimport io\nbuf = io.BytesIO()\n"
           "Image.new('RGB', (8, 8), 'red').save(buf, 'PNG'); buf.getvalue()[:4] == b'\\x89PNG'",
}
EXPECTED = {"scipy": "1.5", "sklearn": "3.0", "seaborn": "True", "tqdm": "4950", "PIL": "True"}


@pytest.mark.parametrize("name", sorted(USES))
async def test_imports_and_works_under_default(manager: KernelManager, name: str) -> None:
    kid = await manager.create_kernel()
    try:
        r = await manager.execute(kid, USES[name])
        assert r.success, r.error
        assert r.result["data"]["text/plain"] == EXPECTED[name]
    finally:
        await manager.destroy_kernel(kid)


async def test_requests_imports_and_default_grants_no_network(manager: KernelManager) -> None:
    kid = await manager.create_kernel()
    try:
        r = await manager.execute(
            kid, "import requests\ntry:\n    requests.get('http://93.184.215.14/', timeout=5)\n"
                 "    outcome = 'reached'\nexcept requests.ConnectionError as e:\n"
                 "    outcome = 'refused'\noutcome")
        assert r.success, r.error
        assert r.result["data"]["text/plain"] == "'refused'"
    finally:
        await manager.destroy_kernel(kid)
