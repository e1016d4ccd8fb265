//! Which Ingresses Skiff serves, shared by the API server (the default class on create), the controller
//! that fills their status and every node's ingress proxy, so that all three agree on what is Skiff's.
//!
//! Sources, read for their behaviour: `plugin/pkg/admission/network/defaultingressclass/admission.go`
//! (the DefaultIngressClass admission plugin) and `k8s.io/api/networking/v1` (the annotations).

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The IngressClass every Skiff cluster has, as k3s ships Traefik's.
pub const SKIFF_CLASS: &str = "skiff";
/// `spec.controller` of the classes Skiff's nodes serve.
pub const SKIFF_CONTROLLER: &str = "skiff.dev/ingress";
/// An IngressClass annotated `"true"` is given to Ingresses created without a class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation older Ingresses carry instead of `spec.ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The class an Ingress created without one gets, as the DefaultIngressClass plugin chooses it: among the
/// classes annotated as the default, the newest (by creation time, then name); None when there is none.
pub fn default_class(classes: &[IngressClass]) -> Option<&IngressClass> {
    let mut defaults: Vec<&IngressClass> = classes.iter().filter(|class| is_default(class)).collect();
    defaults.sort_by(|a, b| {
        let created = |c: &IngressClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(b).cmp(&created(a)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    defaults.first().copied()
}

fn is_default(class: &IngressClass) -> bool {
    class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true")
}

/// The class an Ingress names: `spec.ingressClassName`, else the legacy annotation.
pub fn class_of(ingress: &Ingress) -> Option<&str> {
    let spec = ingress.spec.as_ref().and_then(|spec| spec.ingress_class_name.as_deref());
    spec.or_else(|| ingress.metadata.annotations.as_ref()?.get(CLASS_ANNOTATION).map(String::as_str))
}

/// Whether `ingress` is served by `controller`: its class is one of the controller's, or it names no
/// class and the default class is the controller's (an Ingress made before any class was the default).
pub fn served_by(ingress: &Ingress, classes: &[IngressClass], controller: &str) -> bool {
    let controls = |class: &IngressClass| class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(controller);
    match class_of(ingress) {
        Some(name) => classes.iter().any(|class| class.metadata.name.as_deref() == Some(name) && controls(class)),
        None => default_class(classes).is_some_and(controls),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn class(name: &str, controller: &str, default: bool, created: &str) -> IngressClass {
        let annotations = if default { json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { json!({}) };
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "creationTimestamp": created},
            "spec": {"controller": controller},
        }))
        .unwrap()
    }

    fn ingress(spec_class: Option<&str>, annotation: Option<&str>) -> Ingress {
        let mut ingress = json!({"metadata": {"name": "web"}, "spec": {}});
        if let Some(name) = spec_class {
            ingress["spec"]["ingressClassName"] = json!(name);
        }
        if let Some(name) = annotation {
            ingress["metadata"]["annotations"] = json!({CLASS_ANNOTATION: name});
        }
        serde_json::from_value(ingress).unwrap()
    }

    #[test]
    fn the_newest_default_class_wins_then_the_first_name() {
        let classes = [
            class("old", "a/b", true, "2026-01-01T00:00:00Z"),
            class("new", "a/b", true, "2026-02-01T00:00:00Z"),
            class("newer-not-default", "a/b", false, "2026-03-01T00:00:00Z"),
        ];
        assert_eq!(default_class(&classes).and_then(|c| c.metadata.name.as_deref()), Some("new"));
        let tied = [class("b", "a/b", true, "2026-01-01T00:00:00Z"), class("a", "a/b", true, "2026-01-01T00:00:00Z")];
        assert_eq!(default_class(&tied).and_then(|c| c.metadata.name.as_deref()), Some("a"));
        assert!(default_class(&classes[2..]).is_none());
    }

    #[test]
    fn an_ingress_is_skiffs_by_its_class_or_by_the_default_class() {
        let classes = [
            class(SKIFF_CLASS, SKIFF_CONTROLLER, true, "2026-01-01T00:00:00Z"),
            class("nginx", "k8s.io/ingress-nginx", false, "2026-01-01T00:00:00Z"),
        ];
        assert!(served_by(&ingress(Some("skiff"), None), &classes, SKIFF_CONTROLLER));
        assert!(!served_by(&ingress(Some("nginx"), None), &classes, SKIFF_CONTROLLER));
        assert!(!served_by(&ingress(Some("missing"), None), &classes, SKIFF_CONTROLLER));
        assert!(served_by(&ingress(None, Some("skiff")), &classes, SKIFF_CONTROLLER));
        assert!(!served_by(&ingress(None, Some("nginx")), &classes, SKIFF_CONTROLLER));
        assert!(served_by(&ingress(None, None), &classes, SKIFF_CONTROLLER));
        assert!(!served_by(&ingress(None, None), &classes[1..], SKIFF_CONTROLLER));
    }
}
