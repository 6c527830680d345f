//! vmove-plan
