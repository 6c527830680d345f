//! Building blocks for parsing QEMU's replies without ever failing on
//! values a newer QEMU may send.

/// Declares a string enum with known variants plus `Other(String)`.
///
/// The generated type serializes to / deserializes from a JSON string; an
/// unknown string becomes `Other(..)` and round-trips unchanged. The default
/// value is `Other("")` ("absent / unknown").
macro_rules! lenient_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this crate does not know (newer QEMU); kept verbatim.
            Other(String),
        }

        impl $name {
            /// Every known variant, in schema order.
            pub const KNOWN: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The QEMU wire name.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )*
                    $name::Other(s) => s.as_str(),
                }
            }

            /// Parses a wire name; never fails.
            pub fn from_wire(s: &str) -> Self {
                match s {
                    $( $wire => $name::$variant, )*
                    other => $name::Other(other.to_string()),
                }
            }

            /// True unless this is `Other(..)`.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::Other(String::new())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name::from_wire(s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::from_wire(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                Ok($name::from_wire(&s))
            }
        }
    };
}
pub(crate) use lenient_enum;

/// serde helpers that accept any JSON number (or junk) for integer fields.
pub(crate) mod num {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn to_u64(v: &Value) -> Option<u64> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.max(0.0) as u64)
                }),
            _ => None,
        }
    }

    fn to_i64(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            _ => None,
        }
    }

    fn to_f64(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// `Option<u64>`: negative numbers clamp to 0, floats truncate, anything
    /// that is not a number becomes `None`.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(to_u64(&Value::deserialize(d)?))
    }

    /// `Option<i64>`, lenient like [`opt_u64`].
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(to_i64(&Value::deserialize(d)?))
    }

    /// `Option<f64>`, lenient like [`opt_u64`].
    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(to_f64(&Value::deserialize(d)?))
    }

    /// `u64` with default 0 for junk.
    pub fn u64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(to_u64(&Value::deserialize(d)?).unwrap_or(0))
    }

    /// `i64` with default 0 for junk.
    pub fn i64_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(to_i64(&Value::deserialize(d)?).unwrap_or(0))
    }

    /// `bool` with default false for junk.
    pub fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(Value::deserialize(d)?.as_bool().unwrap_or(false))
    }
}
