"""pytest fixtures of tests/chart: the rendered values matrix (chartlib.CASES), rendered once per session."""

import pytest

import chartlib


@pytest.fixture(scope="session", params=sorted(chartlib.CASES))
def case(request) -> tuple[str, chartlib.Rendered]:
    return request.param, chartlib.render(chartlib.CASES[request.param])


@pytest.fixture(scope="session")
def default() -> chartlib.Rendered:
    return chartlib.render({})
