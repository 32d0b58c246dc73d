//! Spin's application variables (`fermyon:spin/variables@2.0.0`): a component reads
//! the variables of its own `[component.<id>.variables]` table, templates resolved.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin-shop:worlds/variables",
        imports: { default: async | trappable },
    });
}

use bindings::fermyon::spin2_0_0::variables;

/// The variables of one instance's component.
pub struct Variables {
    component: String,
    values: Arc<HashMap<String, String>>,
}

impl Variables {
    pub fn new(component: &str, values: Arc<HashMap<String, String>>) -> Variables {
        Variables {
            component: component.to_owned(),
            values,
        }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    state: fn(&mut T) -> &mut Variables,
) -> anyhow::Result<()> {
    variables::add_to_linker::<T, HasSelf<Variables>>(linker, state)?;
    Ok(())
}

impl variables::Host for Variables {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        if !crate::manifest::is_variable_name(&name) {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        Ok(match self.values.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables::Error::Undefined(format!(
                "component {:?} has no variable {name:?}",
                self.component
            ))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn variables_are_the_components_own() {
        let mut state = Variables::new(
            "c",
            Arc::new(HashMap::from([(
                "api_base".to_owned(),
                "http://x".to_owned(),
            )])),
        );
        assert_eq!(
            variables::Host::get(&mut state, "api_base".into())
                .await
                .unwrap()
                .unwrap(),
            "http://x"
        );
        assert!(matches!(
            variables::Host::get(&mut state, "other".into())
                .await
                .unwrap(),
            Err(variables::Error::Undefined(_))
        ));
        assert!(matches!(
            variables::Host::get(&mut state, "API_BASE".into())
                .await
                .unwrap(),
            Err(variables::Error::InvalidName(_))
        ));
    }
}
