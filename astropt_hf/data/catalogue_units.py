"""What the catalogue columns of the built-in galaxies mean and in which units, for axis labels and captions.

The data code owns this map because it defines the columns (``synthetic.TRUTH_COLUMNS``); every figure
that shows a catalogue column takes its label from here, so one change reaches all of them. Columns the
map does not know (a user's own catalogue) are shown by their own name.
"""

from __future__ import annotations

import dataclasses

__all__ = ["CATALOGUE_COLUMNS", "ColumnDescription", "column_caption", "column_label", "column_unit"]


@dataclasses.dataclass(frozen=True)
class ColumnDescription:
    """How one catalogue column is written.

    Attributes:
        name: what the column is, in words ("r-band magnitude").
        unit: its unit ("AB mag"); empty for dimensionless quantities.
        symbol: short symbol for captions under small pictures ("r", "z").
        decimals: digits after the point in captions.
    """

    name: str
    unit: str = ""
    symbol: str = ""
    decimals: int = 2


CATALOGUE_COLUMNS: dict[str, ColumnDescription] = {
    "redshift": ColumnDescription("redshift z", symbol="z", decimals=3),
    "mag_g": ColumnDescription("g-band magnitude", "AB mag", symbol="g"),
    "mag_r": ColumnDescription("r-band magnitude", "AB mag", symbol="r"),
    "mag_z": ColumnDescription("z-band magnitude", "AB mag", symbol="m_z"),
    "g_r": ColumnDescription("g − r colour", "mag", symbol="g − r"),
    "r_z": ColumnDescription("r − z colour", "mag", symbol="r − z"),
    "bulge_fraction": ColumnDescription("bulge fraction B/T", symbol="B/T"),
    "half_light_radius": ColumnDescription("half-light radius", "arcsec", symbol="R½", decimals=1),
    "axis_ratio": ColumnDescription("axis ratio b/a", symbol="b/a"),
    # Degrees counter-clockwise from the stamp's +x axis (the generator's convention).
    "position_angle": ColumnDescription("position angle", "deg", symbol="PA", decimals=0),
}


def column_label(column: str, unit: bool = True) -> str:
    """Axis label of a column: ``"r-band magnitude [AB mag]"``; ``unit=False`` gives ``"r-band magnitude"``.
    Unknown columns keep their own name."""
    description = CATALOGUE_COLUMNS.get(column)
    if description is None:
        return column
    return f"{description.name} [{description.unit}]" if unit and description.unit else description.name


def column_unit(column: str) -> str:
    """Unit of a column ("" when dimensionless or unknown)."""
    description = CATALOGUE_COLUMNS.get(column)
    return description.unit if description is not None else ""


def column_caption(column: str, value: float) -> str:
    """Short caption of one value: ``"z = 0.123"``, ``"r = 17.85 mag"``; unknown columns by name."""
    description = CATALOGUE_COLUMNS.get(column)
    if description is None:
        return f"{column} = {value:.3g}"
    unit = {"AB mag": "mag", "arcsec": '"', "deg": "°"}.get(description.unit, description.unit)
    text = f"{description.symbol or column} = {value:.{description.decimals}f}"
    if unit in ('"', "°"):
        return text + unit
    return f"{text} {unit}".rstrip()
