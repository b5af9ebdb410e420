//! Protobuf-JSON (protojson) conventions shared by the Hubble-shaped types:
//! enums as their proto names, `Timestamp` as RFC 3339, 64-bit integers as
//! strings, and the `proto_enum!` macro that generates enums whose numbers are
//! the proto's.
//!
//! Owns only encoding rules; the types themselves live in [`crate::flow`].

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Defines a proto enum: `#[repr(i32)]` Rust enum with the proto's numbers,
/// `as_str_name` / `from_str_name` / `from_i32` (named as prost names them, so
/// a later protobuf encoder converts with `as i32`), and serde as protojson
/// does it: the name on output; a name or a number on input. Unknown names and
/// numbers read back as the zero value, so flow logs written by a newer Hubble
/// still load.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(#[$dmeta:meta])*
            $dvariant:ident = $dnum:literal => $dproto:literal,
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $proto:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(i32)]
        pub enum $name {
            $(#[$dmeta])*
            #[default]
            $dvariant = $dnum,
            $( $(#[$vmeta])* $variant = $num, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$name::$dvariant, $($name::$variant,)*];

            /// The value's name in the `.proto` file (what protojson prints).
            pub const fn as_str_name(self) -> &'static str {
                match self {
                    $name::$dvariant => $dproto,
                    $( $name::$variant => $proto, )*
                }
            }

            /// The value with this `.proto` name.
            pub fn from_str_name(name: &str) -> Option<Self> {
                match name {
                    $dproto => Some($name::$dvariant),
                    $( $proto => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// The value with this number.
            pub const fn from_i32(number: i32) -> Option<Self> {
                match number {
                    $dnum => Some($name::$dvariant),
                    $( $num => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// Whether this is the zero value (omitted from protojson output).
            pub fn is_default(&self) -> bool {
                *self == $name::$dvariant
            }
        }

        impl From<$name> for i32 {
            fn from(value: $name) -> i32 {
                value as i32
            }
        }

        impl TryFrom<i32> for $name {
            type Error = i32;
            fn try_from(number: i32) -> Result<Self, i32> {
                $name::from_i32(number).ok_or(number)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str_name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str_name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any($crate::pbjson::EnumVisitor::new(
                    stringify!($name),
                    |s| $name::from_str_name(s),
                    |n| $name::from_i32(n),
                ))
            }
        }
    };
}
pub(crate) use proto_enum;

/// Serde visitor for [`proto_enum!`] types: accepts a name or a number.
pub(crate) struct EnumVisitor<T> {
    what: &'static str,
    by_name: fn(&str) -> Option<T>,
    by_number: fn(i32) -> Option<T>,
}

impl<T> EnumVisitor<T> {
    pub(crate) fn new(
        what: &'static str,
        by_name: fn(&str) -> Option<T>,
        by_number: fn(i32) -> Option<T>,
    ) -> Self {
        Self {
            what,
            by_name,
            by_number,
        }
    }
}

impl<T: Default> Visitor<'_> for EnumVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} name or number", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.by_name)(v).unwrap_or_default())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(i32::try_from(v)
            .ok()
            .and_then(self.by_number)
            .unwrap_or_default())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(i32::try_from(v)
            .ok()
            .and_then(self.by_number)
            .unwrap_or_default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

/// `serde(with)` for `u64`: protojson writes 64-bit integers as strings and
/// reads either form.
pub(crate) mod u64_string {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 20];
        s.serialize_str(format_u64(*v, &mut buf))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned 64-bit integer as a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(E::custom)
            }
            fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
                Ok(0)
            }
        }
        d.deserialize_any(V)
    }
}

/// Decimal digits of `v` in `buf` (a u64 has at most 20), without `fmt`.
pub(crate) fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or_default()
}

/// Small fixed-capacity string for formatting without the heap.
pub(crate) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended, so the bytes are UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `skip_serializing_if` helper for numeric zero values.
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `skip_serializing_if` helper for `false`.
pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}
