//! Kubernetes' name and label rules. They live in weir-policy
//! (`weir_policy::names`), which validates NetworkPolicies with them, so that
//! a label a Pod may carry is exactly a label a selector may name.

pub use weir_policy::names::{
    dns1123_label, dns1123_subdomain, iana_svc_name, label_value, qualified_name,
};
