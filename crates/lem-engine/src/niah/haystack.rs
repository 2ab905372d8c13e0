//! The haystack: a seeded generator of varied sentences from templates and word lists
//! written for lem (nothing copied from elsewhere), and the words needles are made of.

/// A small deterministic generator (SplitMix64): the same seed gives the same haystack on
/// every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6C65_6D5F_6E69_6168)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of `xs`.
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const PEOPLE: &[&str] = &[
    "the baker",
    "a retired pilot",
    "my neighbour",
    "the night guard",
    "a young painter",
    "the ferry captain",
    "an old librarian",
    "the gardener",
    "a travelling tailor",
    "the schoolteacher",
    "a quiet clockmaker",
    "the village doctor",
    "a street musician",
    "the harbour master",
    "a curious child",
    "the beekeeper",
];
const VERBS: &[&str] = &[
    "repaired",
    "painted",
    "carried",
    "described",
    "sold",
    "borrowed",
    "measured",
    "polished",
    "forgot",
    "found",
    "sketched",
    "wrapped",
    "counted",
    "mended",
    "returned",
    "admired",
];
const THINGS: &[&str] = &[
    "a wooden chair",
    "the copper kettle",
    "a box of letters",
    "an umbrella",
    "the iron gate",
    "a basket of pears",
    "the broken lantern",
    "a map of the coast",
    "a pair of boots",
    "the blue bicycle",
    "a jar of honey",
    "the garden fence",
    "an old violin",
    "a stack of plates",
    "the kitchen clock",
    "a roll of canvas",
];
const PLACES: &[&str] = &[
    "near the market",
    "by the river",
    "behind the station",
    "in the small square",
    "at the edge of town",
    "under the bridge",
    "beside the bakery",
    "on the hill road",
    "in the covered yard",
    "outside the library",
    "along the canal",
    "at the corner shop",
];
const TIMES: &[&str] = &[
    "on Monday morning",
    "late in the evening",
    "before the rain came",
    "after lunch",
    "at dawn",
    "during the festival",
    "in early spring",
    "on a windy afternoon",
    "the week before",
    "just after sunset",
];
const ADJECTIVES: &[&str] =
    &["cheerful", "patient", "tired", "careful", "busy", "thoughtful", "restless", "calm", "proud", "puzzled"];
const WEATHER: &[&str] = &[
    "The sky was grey",
    "A light wind blew",
    "The streets were quiet",
    "It had rained all night",
    "The air smelled of bread",
    "Sunlight fell on the roofs",
    "Fog hung over the water",
    "The bells rang twice",
];
pub(crate) const KEY_ADJ: &[&str] = &[
    "amber", "brisk", "cobalt", "dusty", "eager", "frosty", "gentle", "hollow", "ivory", "jolly", "lunar", "mellow",
    "nimble", "olive", "plain", "quiet", "rustic", "silver", "tidy", "velvet",
];
pub(crate) const KEY_NOUN: &[&str] = &[
    "falcon", "harbor", "meadow", "lantern", "pebble", "orchard", "compass", "thimble", "canyon", "beacon", "walnut",
    "kettle", "glacier", "sparrow", "ribbon", "anchor", "thistle", "marble", "cedar", "quarry",
];
pub(crate) const VALUE_WORDS: &[&str] = &[
    "tangerine",
    "marigold",
    "porcelain",
    "sandalwood",
    "labyrinth",
    "saxophone",
    "avalanche",
    "chrysalis",
    "mandolin",
    "nightingale",
    "obsidian",
    "quicksilver",
    "rhubarb",
    "sycamore",
    "tapestry",
    "zeppelin",
];

/// One sentence of haystack: a template filled from the word lists.
pub fn sentence(rng: &mut Rng) -> String {
    let cap = |s: &str| {
        let mut c = s.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
    };
    match rng.below(6) {
        0 => format!("{} {} {} {}.", cap(rng.pick(PEOPLE)), rng.pick(VERBS), rng.pick(THINGS), rng.pick(PLACES)),
        1 => format!("{}, {} {} {}.", cap(rng.pick(TIMES)), rng.pick(PEOPLE), rng.pick(VERBS), rng.pick(THINGS)),
        2 => format!("{} while {} looked {}.", rng.pick(WEATHER), rng.pick(PEOPLE), rng.pick(ADJECTIVES)),
        3 => format!(
            "Nobody knew why {} had {} {} {}.",
            rng.pick(PEOPLE),
            rng.pick(VERBS),
            rng.pick(THINGS),
            rng.pick(TIMES)
        ),
        4 => format!(
            "{} seemed {}, and {} {} {}.",
            cap(rng.pick(PEOPLE)),
            rng.pick(ADJECTIVES),
            rng.pick(PEOPLE),
            rng.pick(VERBS),
            rng.pick(THINGS)
        ),
        _ => format!("{} {}; {} was {}.", rng.pick(WEATHER), rng.pick(PLACES), rng.pick(PEOPLE), rng.pick(ADJECTIVES)),
    }
}
