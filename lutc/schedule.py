"""Schedule: the explicit, hashable, JSON-serializable knob set of a LUT-GEMM kernel."""
from __future__ import annotations

import dataclasses
import json
import math

LUT_DTYPES = ("int8", "float16", "float32")
INTERLEAVES = ("chunk", "plane")
PATHS = ("lut", "dot")
ACT_BLOCKS = (32, 64, 128, 256)         # the tuner's choices of act_block (dot path)
KNOB_CHOICES = {
    "g": (2, 3, 4),
    "lut_dtype": LUT_DTYPES,
    "bn": (16, 32, 64, 128),
    "unroll": (1, 2, 4, 8),
    "mb": (1, 2, 4),
    "interleave": INTERLEAVES,
    "prefetch": (0, 1, 2, 4, 8, 16),
}
DOT_KNOB_CHOICES = {         # the path knob and the dot path's own knobs
    "path": PATHS,
    "dot_bm": (8, 16, 32, 64),
    "dot_ns": (4, 8, 16),
}
LAYOUT_KNOBS = ("g", "bn", "interleave")   # the knobs the packed weight layout depends on, besides bits and group size
LUT_SCALE_BLOCKS = (8, 16, 32, 64, 128)   # the tuner's choices of lut_scale_block (any int >= 1 is valid)
# bits -> (lut_scale_block, lut_scale_ratio, lut_fine_planes) when not given (measured:
# docs/quantization.md, "Table precision"): 1-2-bit block 16 with integer ratios, 3-4-bit block
# 32 with float scales; PAIR_TABLE_SCALES overrides them for pair-sum lookups (lut_pair), where a
# block's integer ratio rides in the pair multiply-add: 4-bit block 8 with integer ratios and the
# top two bit-planes refined (docs/quantization.md, "W4 on pair-sum lookups")
DEFAULT_TABLE_SCALES = {1: (16, 64, 0), 2: (16, 64, 0), 3: (32, 0, 0), 4: (32, 0, 0)}
PAIR_TABLE_SCALES = {4: (8, 64, 2)}
LUT_SCALE_RATIOS = (0, 8, 64)         # the tuner's choices of lut_scale_ratio (any int >= 0 is valid)
INT16_MAX = 32767
FINE_STEPS = 16                       # lut_fine_planes: residual steps per int8 table step (|residual| <= 8)


def default_table_scales(bits: int, pair: bool) -> tuple:
    """(lut_scale_block, lut_scale_ratio, lut_fine_planes) a Schedule takes when they are not given."""
    block_ratio = DEFAULT_TABLE_SCALES.get(bits, (32, 0, 0))
    return PAIR_TABLE_SCALES.get(bits, block_ratio) if pair else block_ratio


def m_bucket(M: int) -> int:
    """The M bucket a schedule is chosen for (and a tuning-db entry covers): the smallest power of
    two >= M (1, 2, 4, ..., 128, ...). Everything that picks a schedule by M picks it per bucket."""
    return 1 if M <= 1 else 1 << (int(M) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How to run y = x @ W_hat^T for `bits`-bit weights quantized in groups of `group_size`.

    Knobs: g (activations per table; 2**g entries), lut_dtype (table precision), bn (weight
    rows per tile), unroll (table chunks per loop step; not given: 4, at most one scale block's chunks), mb (activation rows sharing one
    pass over a weight tile), interleave (packed order of bit-planes vs table chunks),
    lut_scale_block (int8 tables: activations sharing one table scale; rounded down to whole
    packed chunks of g * per_byte activations, at least one chunk; >= group_size means one
    scale per weight group, the pre-issue-10 path; ignored by float tables; not given: 16 for
    1-2-bit and 32 for 3-4-bit weights, 8 for 4-bit with lut_pair: default_table_scales), lut_centered (int8
    tables store subset sums minus half the table's activation sum: the sign-symmetric form of
    T-MAC's mirror consolidation, half the range for the same int8 step; exact correction
    through the zero term; False with lut_scale_block >= group_size is the old path),
    lut_scale_ratio (int8 tables with several scale blocks: 0 = every block has its own float
    scale, combined in float per block; R >= 1 = a block's scale is an integer multiple r in
    1..R of one unit step per (row, group), so blocks combine with one int16 multiply-add and
    convert to float once per group; the multipliers of a group share a budget that keeps the
    int16 sum in range, see `ratio_budget`; not given: 64 for 1-2-bit, 0 for 3-4-bit weights,
    64 for 4-bit with lut_pair),
    lut_pair (int8 tables: the two lookups of each packed byte, same rows and scale block, are
    widened and summed by one tl.pair_madd, which also applies the block's integer ratio; with
    32-row tiles on a 512-bit x86 target such kernels stay in 256-bit registers, spec.gemm_target;
    default False, the single-lookup path: widen each lookup, then multiply per block; the
    untuned default, lutc.ops.default_layout, turns it on for x86 targets with pshufb, in bn=64
    tiles on 512-bit ones; measured in docs/runtime.md, "Pair-sum lookups"), lut_fine_planes
    (int8 tables: the top this-many bit-planes also look up a residual table, so their table
    entries carry 4 more bits, see `fine_planes`; 0 = off; not given: 2 for 4-bit weights with
    lut_pair, else 0; measured in docs/quantization.md, "W4 on pair-sum lookups"), prefetch (lut path: lut_gemm prefetches the packed weights and scales
    of the weight group this many groups ahead, running on into the next tile; 0 = off, the
    Schedule default; lutc.ops.default_prefetch sets ~2 KB ahead at W1-W2; docs/runtime.md, "Software prefetch") and threads (None = all cores; it does not change generated code).

    path chooses the kernel pair: "lut" (table build + lut_gemm, the knobs above) or "dot" (int8
    activations + tl.dot on weight levels decoded from the same packed layout,
    lutc/kernels/dotgemm.py; needs g in (2, 4) and group_size a multiple of 32). Dot knobs: dot_bm
    (activation rows per output block), dot_ns (weight rows per output block, divides bn),
    act_block (activations per int8 activation scale, capped at group_size; must divide it),
    act_residual (a second int8 dot on the activations' rounding residual: ~15-bit activations at
    twice the dot work; without it, int8 activations cost SmolLM2 W4 3% perplexity).
    Schedules are chosen per M bucket (lutc.ops.choose_schedule), so the path is too.
    """

    bits: int
    group_size: int
    g: int = 4
    lut_dtype: str = "int8"
    bn: int = 32
    unroll: int | None = None                   # None: min(4, scale_chunks)
    mb: int = 1
    interleave: str = "chunk"
    lut_scale_block: int | None = None          # None: DEFAULT_TABLE_SCALES[bits][0]
    lut_centered: bool = True
    lut_scale_ratio: int | None = None          # None: DEFAULT_TABLE_SCALES[bits][1]
    lut_pair: bool = False
    lut_fine_planes: int | None = None          # None: default_table_scales(bits, lut_pair)[2]
    prefetch: int = 0
    threads: int | None = None
    path: str = "lut"
    dot_bm: int = 8
    dot_ns: int = 16
    act_block: int = 128
    act_residual: bool = True
    kernel: str = "lut_gemm"

    def __post_init__(self):
        block, ratio, fine = default_table_scales(self.bits, self.lut_pair)   # the untuned defaults by width and lookup form
        if self.lut_scale_block is None:
            object.__setattr__(self, "lut_scale_block", block)
        if self.lut_scale_ratio is None:
            object.__setattr__(self, "lut_scale_ratio", ratio)
        if self.lut_fine_planes is None:
            object.__setattr__(self, "lut_fine_planes", fine)
        if self.unroll is None:           # after the table scales: the chunks of one scale block bound it
            object.__setattr__(self, "unroll", min(4, self.scale_chunks))
        self.validate()

    def validate(self):
        def bad(msg):
            raise ValueError(f"invalid schedule: {msg}")
        for name in ("bits", "group_size", "g", "bn", "unroll", "mb", "lut_scale_block", "lut_scale_ratio",
                     "lut_fine_planes", "act_block", "prefetch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(f"{name} must be an int, got {v!r}")
        for name in ("lut_centered", "act_residual", "lut_pair"):
            if not isinstance(getattr(self, name), bool):
                bad(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.lut_scale_ratio < 0:
            bad(f"lut_scale_ratio must be >= 0, got {self.lut_scale_ratio}")
        if self.lut_scale_block < 1:
            bad(f"lut_scale_block must be >= 1, got {self.lut_scale_block}")
        if not 1 <= self.bits <= 4:
            bad(f"bits must be 1-4, got {self.bits}")
        if not 0 <= self.lut_fine_planes <= self.bits:
            bad(f"lut_fine_planes must be 0..bits={self.bits}, got {self.lut_fine_planes}")
        if self.group_size < 1:
            bad(f"group_size must be >= 1, got {self.group_size}")
        for name, choices in {**KNOB_CHOICES, **DOT_KNOB_CHOICES}.items():
            if getattr(self, name) not in choices:
                bad(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            bad(f"threads must be None or an int >= 1, got {self.threads!r}")
        if self.kernel != "lut_gemm":
            bad(f"unknown kernel {self.kernel!r}")
        if self.path == "dot":
            why = self.dot_problem()
            if why:
                bad(why)

    def dot_problem(self) -> str | None:
        """Why this layout and these knobs cannot take the dot path, or None."""
        if self.g not in (2, 4):
            return f"path='dot' decodes 8 columns per packed byte: needs g 2 or 4, got g={self.g}"
        if self.group_size % 32:
            return f"path='dot' needs group_size a multiple of 32, got {self.group_size}"
        xb = self.act_scale_block
        if xb < 32 or xb % 32 or self.group_size % xb:
            return (f"path='dot': act_block={self.act_block} gives {xb} activations per scale; it must be a "
                    f"multiple of 32 dividing group_size={self.group_size}")
        if self.bn % self.dot_ns:
            return f"path='dot': dot_ns={self.dot_ns} must divide bn={self.bn}"
        return None

    @property
    def act_scale_block(self) -> int:
        """Activations per int8 activation scale on the dot path: min(act_block, group_size)."""
        return min(self.act_block, self.group_size)

    # -- derived layout constants
    @property
    def slot_bits(self) -> int:
        """Bits per table index in a packed byte (2 for g=2, else 4)."""
        return 2 if self.g == 2 else 4

    @property
    def per_byte(self) -> int:
        return 8 // self.slot_bits

    @property
    def tables_per_group(self) -> int:
        return math.ceil(self.group_size / self.g)

    @property
    def chunks_per_group(self) -> int:
        """Packed bytes per row, bit-plane and group (each byte holds `per_byte` indices)."""
        return math.ceil(self.tables_per_group / self.per_byte)

    @property
    def padded_tables(self) -> int:
        return self.chunks_per_group * self.per_byte

    @property
    def table_size(self) -> int:
        return 1 << self.g

    @property
    def scale_chunks(self) -> int:
        """Packed chunks (per_byte tables each) sharing one table scale: all of a group's for
        float tables or lut_scale_block >= group_size, else lut_scale_block // (g * per_byte) >= 1."""
        cpg = self.chunks_per_group
        if self.lut_dtype != "int8" or self.lut_scale_block >= self.group_size:
            return cpg
        return max(1, min(cpg, self.lut_scale_block // (self.g * self.per_byte)))

    @property
    def centered(self) -> bool:
        """int8 tables hold subset sums minus half the table's sum (float tables never do)."""
        return self.lut_dtype == "int8" and self.lut_centered

    @property
    def scale_blocks(self) -> int:
        """Table scales per (activation row, group); the last block may hold fewer chunks."""
        return -(-self.chunks_per_group // self.scale_chunks)

    @property
    def ratio_budget(self) -> int:
        """The multipliers r of a group's blocks sum to at most ratio_budget + scale_blocks =
        32767 // (127 * tables per block): each block's int16 partial sum is <= 127 * tables,
        so the group's sum of r * partial sums fits int16. 0 when that leaves no room (> 1000
        activations per group at g = 4)."""
        return max(0, INT16_MAX // (127 * self.scale_chunks * self.per_byte) - self.scale_blocks)

    @property
    def scale_ratio(self) -> int:
        """Largest integer block-scale multiplier R (0: float block scales): lut_scale_ratio for
        int8 tables with several scale blocks and a positive ratio_budget, else 0."""
        if self.lut_dtype != "int8" or self.scale_blocks == 1 or self.ratio_budget < 1:
            return 0
        return self.lut_scale_ratio

    @property
    def paired(self) -> bool:
        """int8 tables with lut_pair: lut_gemm sums each packed byte's two lookups with one
        tl.pair_madd (float tables ignore the knob)."""
        return self.lut_pair and self.lut_dtype == "int8"

    @property
    def fine_planes(self) -> int:
        """Top bit-planes whose lookups are refined by a residual table (lut_fine_planes; int8
        tables only, else 0). The tables launch then writes a second set of TPGP tables per (row,
        group), r = round(FINE_STEPS * v) - FINE_STEPS * round(v) (v = entry / step, |r| <= 8), and
        lut_gemm sums those planes' residual lookups into their own accumulators (times the
        block's ratio, as the plane's own lookups), added with s_b / FINE_STEPS. |r| <= 8 < 127,
        so a residual sum stays within the bounds of the plane's own (acc_dtype, ratio_budget)."""
        return self.lut_fine_planes if self.lut_dtype == "int8" else 0

    @property
    def table_sets(self) -> int:
        """Table sets per (row, group) in the luts scratch: the int8 tables, plus the residual
        tables when fine_planes > 0."""
        return 2 if self.fine_planes else 1

    @property
    def scale_slots(self) -> int:
        """Floats in lut_scales per (activation row, group): NB block scales, or with integer
        ratios one unit step followed by the NB multipliers."""
        return self.scale_blocks + (1 if self.scale_ratio else 0)

    @property
    def acc_dtype(self) -> str:
        """Accumulator of one scale block's lookups: int16 for int8 tables when it cannot overflow
        (with integer ratios the whole group's sum fits, see ratio_budget)."""
        if self.lut_dtype != "int8":
            return "float32"
        return "int16" if self.scale_chunks * self.per_byte * 127 <= INT16_MAX else "int32"

    @property
    def layout_key(self) -> tuple:
        """Everything the packed weight layout depends on: bits, group size and LAYOUT_KNOBS."""
        return (self.bits, self.group_size) + tuple(getattr(self, k) for k in LAYOUT_KNOBS)

    @property
    def codegen_key(self) -> tuple:
        """Every knob that changes generated code (threads does not)."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "threads")

    def with_layout(self, other: "Schedule") -> "Schedule":
        """This schedule in `other`'s packed layout (g, bn, interleave); the LUT path if the dot path
        cannot read that layout (g = 3, or bn not a multiple of dot_ns)."""
        layout = {k: getattr(other, k) for k in LAYOUT_KNOBS}
        try:
            return self.replace(**layout)
        except ValueError:
            if self.path != "dot":
                raise
            return self.replace(path="lut", **layout)

    def knobs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("bits", "group_size", "kernel")}

    def replace(self, **changes) -> "Schedule":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "Schedule":
        return cls.from_dict(json.loads(s))

    @classmethod
    def make(cls, bits, group_size=128, **knobs) -> "Schedule":
        """A Schedule with defaults for every knob not given; an unknown knob is a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)} - {"bits", "group_size", "kernel"}
        unknown = set(knobs) - names
        if unknown:
            raise ValueError(f"unknown knob(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
        return cls(bits=bits, group_size=group_size, **knobs)

