import numpy as np
import pytest

from pipeline.coords import Grid
from pipeline.physics import build_phi, build_phi_closed_form, pixel_integral_1d, render, render_batch


@pytest.fixture(scope="module")
def phi():
    return build_phi()


def test_phi_matches_closed_form_to_1e9(phi):
    assert phi.shape == (121, 1089)
    assert np.abs(phi - build_phi_closed_form()).max() < 1e-9


def test_phi_centre_value_and_orientation(phi):
    grid = Grid()
    centre = grid.to_hr_index(5.0) * grid.hr_size + grid.to_hr_index(5.0)
    assert phi[5 * 11 + 5, centre] == pytest.approx(0.46606, abs=5e-6)
    # a target at (x=3, y=7) (row 3, column 7) peaks in LR pixel row 3, column 7
    column = grid.to_hr_index(3.0) * grid.hr_size + grid.to_hr_index(7.0)
    assert np.argmax(phi[:, column]) == 3 * 11 + 7


def test_phi_columns_sum_to_one_away_from_border(phi):
    grid = Grid()
    centres = grid.hr_centres()
    inner = (centres > 2) & (centres < 8)
    cols = (np.flatnonzero(inner)[:, None] * grid.hr_size + np.flatnonzero(inner)[None, :]).ravel()
    assert np.allclose(phi[:, cols].sum(axis=0), 1.0, atol=1e-9)


@pytest.mark.parametrize("size,c,sigma", [(7, 1, 0.5), (9, 5, 0.7), (11, 3, 0.3)])
def test_phi_other_grids(size, c, sigma):
    built = build_phi(size, c, sigma)
    assert built.shape == (size * size, (c * size) ** 2)
    assert np.abs(built - build_phi_closed_form(size, c, sigma)).max() < 1e-9


def test_phi_rejects_bad_arguments():
    with pytest.raises(ValueError):
        build_phi(11, 2, 0.5)
    with pytest.raises(ValueError):
        build_phi(11, 3, 0.0)


def test_render_equals_phi_column_for_on_grid_target(phi):
    grid = Grid()
    column = grid.to_hr_index(4.0 + 1 / 3) * grid.hr_size + grid.to_hr_index(6.0 - 1 / 3)
    image = render(np.array([[4.0 + 1 / 3, 6.0 - 1 / 3, 230.0]]))
    assert np.allclose(image.ravel(), 230.0 * phi[:, column], atol=1e-10)


def test_render_is_linear_and_batch_consistent():
    targets = np.array([[3.2, 4.1, 220.0], [3.5, 4.4, 240.0]])
    together = render(targets)
    apart = render(targets[:1]) + render(targets[1:])
    assert np.allclose(together, apart)
    batch = render_batch(targets[None, :, 0].repeat(3, 0), targets[None, :, 1].repeat(3, 0),
                         targets[None, :, 2].repeat(3, 0))
    assert np.allclose(batch, together[None])


def test_pixel_integral_symmetry_and_mass():
    d = np.linspace(-3, 3, 13)
    assert np.allclose(pixel_integral_1d(d, 0.5), pixel_integral_1d(-d, 0.5))
    assert pixel_integral_1d(np.arange(-20, 21), 0.5).sum() == pytest.approx(1.0)
