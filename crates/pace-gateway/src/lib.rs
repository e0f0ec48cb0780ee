//! placeholder: gateway topology (being written)
