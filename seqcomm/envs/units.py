"""StarCraft II unit types and SMAC maps used by ``microcombat`` (docs/method.md §6.4).

Sources of the numbers:

- health, shields, armour, damage (+ bonus vs armoured, attacks per volley), weapon range,
  weapon cooldown, movement speed: StarCraft II Legacy of the Void unit statistics as listed on
  Liquipedia, times at "faster" game speed (the speed SMAC runs at: 22.4 game loops per
  second). SMAC ran SC2 4.6-4.10, where the stalker does 13 (+5 armoured) every 1.34 s.
- radius: the unit footprints used by JaxMARL's SMAX (``unit_type_radiuses`` in
  ``smax_env.py``), which match the SC2 editor values.
- shoot_range 6, sight range 9 and the cooldown normalisers (``max_cooldown``, in game loops)
  are SMAC's (``unit_shoot_range``, ``unit_sight_range``, ``unit_max_cooldown`` in
  ``smac/env/starcraft2/starcraft2.py``). Max shields (stalker 80, zealot 50) are SMAC's
  ``unit_max_shield``.
- map ally/enemy lists and episode limits: SMAC's ``map_param_registry``
  (``smac/env/starcraft2/maps/smac_maps.py``); unit order inside a team follows SMAC, which
  sorts allies by SC2 unit id (stalker before zealot).
"""

from __future__ import annotations

from dataclasses import dataclass

#: game loops per second at SC2's "faster" speed; SMAC steps 8 loops per agent step.
LOOPS_PER_SECOND = 22.4
SMAC_STEP_MUL = 8


@dataclass(frozen=True)
class UnitType:
    """Statistics of one SC2 unit type (see the module docstring for the sources)."""

    health: float
    shield: float
    armour: float
    damage: float  # per attack, before armour
    bonus_armoured: float  # extra damage per attack against armoured targets
    attacks: int  # attacks per volley (zealot: 2)
    weapon_range: float  # SC2 weapon range, edge to edge (melee 0.1)
    cooldown: float  # seconds between volleys at "faster" speed
    speed: float  # distance per second at "faster" speed
    radius: float
    armoured: bool
    shoot_range: float = 6.0  # SMAC: attack actions available within this centre distance
    max_cooldown: float = 15.0  # SMAC's state normaliser, in game loops


UNIT_TYPES: dict[str, UnitType] = {
    "marine": UnitType(health=45, shield=0, armour=0, damage=6, bonus_armoured=0, attacks=1,
                       weapon_range=5, cooldown=0.61, speed=3.15, radius=0.375,
                       armoured=False, max_cooldown=15),
    "marauder": UnitType(health=125, shield=0, armour=1, damage=10, bonus_armoured=10,
                         attacks=1, weapon_range=6, cooldown=1.07, speed=3.15, radius=0.5625,
                         armoured=True, max_cooldown=25),
    "stalker": UnitType(health=80, shield=80, armour=1, damage=13, bonus_armoured=5, attacks=1,
                        weapon_range=6, cooldown=1.34, speed=4.13, radius=0.625,
                        armoured=True, max_cooldown=35),
    "zealot": UnitType(health=100, shield=50, armour=1, damage=8, bonus_armoured=0, attacks=2,
                       weapon_range=0.1, cooldown=0.86, speed=3.15, radius=0.5,
                       armoured=False, max_cooldown=22),
}


@dataclass(frozen=True)
class MapSpec:
    """A SMAC scenario: the agents' units, the scripted enemy's units and the step limit."""

    allies: tuple[str, ...]
    enemies: tuple[str, ...]
    limit: int
    size: float = 32.0  # side of the square playable area


def _team(*groups: tuple[str, int]) -> tuple[str, ...]:
    return tuple(name for name, count in groups for _ in range(count))


MAPS: dict[str, MapSpec] = {
    "3m": MapSpec(_team(("marine", 3)), _team(("marine", 3)), 60),
    # not a SMAC map: a size between 3m and 8m for checking a 3m result at another team size
    # (SMACv2 draws team sizes freely); 3m's limit, since a 4-on-4 fight is fought in parallel
    "4m": MapSpec(_team(("marine", 4)), _team(("marine", 4)), 60),
    "8m": MapSpec(_team(("marine", 8)), _team(("marine", 8)), 120),
    "2s3z": MapSpec(_team(("stalker", 2), ("zealot", 3)), _team(("stalker", 2), ("zealot", 3)),
                    120),
    "3s5z": MapSpec(_team(("stalker", 3), ("zealot", 5)), _team(("stalker", 3), ("zealot", 5)),
                    150),
    "5m_vs_6m": MapSpec(_team(("marine", 5)), _team(("marine", 6)), 70),
    "10m_vs_11m": MapSpec(_team(("marine", 10)), _team(("marine", 11)), 150),
    "27m_vs_30m": MapSpec(_team(("marine", 27)), _team(("marine", 30)), 180),
}
