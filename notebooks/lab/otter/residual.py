"""otter-grader test for the residual exercise, written by resnet_multi.lab.report.otter_test:
each case is one test of `resnet-multi check`, run once on the notebook's objects."""

from otter.test_files import test_case

OK_FORMAT = False
name = "residual"
points = 10
_results = {}


def _result(env):
    from resnet_multi import lab

    key = id(env)
    if key not in _results:
        _results[key] = lab.check(env, "residual", None, quiet=True)
    return _results[key]


@test_case(name="builds with the chapter's signature", points=1)
def test_0(env):
    t = _result(env).tests[0]
    assert t.passed, t.line()


@test_case(name="output shapes", points=1)
def test_1(env):
    t = _result(env).tests[1]
    assert t.passed, t.line()


@test_case(name="parameter count", points=1)
def test_2(env):
    t = _result(env).tests[2]
    assert t.passed, t.line()


@test_case(name="weights load by the book's attribute names", points=1)
def test_3(env):
    t = _result(env).tests[3]
    assert t.passed, t.line()


@test_case(name="outputs, training mode", points=1)
def test_4(env):
    t = _result(env).tests[4]
    assert t.passed, t.line()


@test_case(name="outputs, inference mode", points=1)
def test_5(env):
    t = _result(env).tests[5]
    assert t.passed, t.line()


@test_case(name="input gradient", points=1)
def test_6(env):
    t = _result(env).tests[6]
    assert t.passed, t.line()


@test_case(name="weight gradients", points=1)
def test_7(env):
    t = _result(env).tests[7]
    assert t.passed, t.line()


@test_case(name="BatchNorm running statistics after one step", points=1)
def test_8(env):
    t = _result(env).tests[8]
    assert t.passed, t.line()


@test_case(name="one SGD step moves every parameter", points=1)
def test_9(env):
    t = _result(env).tests[9]
    assert t.passed, t.line()
