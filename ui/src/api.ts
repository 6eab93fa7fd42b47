// The station's API as more than one page reads it: the shapes of its answers (the OpenAPI
// document, src/serve/openapi.json, names each schema) and what an error answer says.

/** What a role may do (`Permission`). */
export type Permission =
  | 'read' | 'pull' | 'label' | 'flag' | 'change_models' | 'work_orders'
  | 'push_sensors' | 'respond_to_alarms' | 'alarm_service' | 'admin';

/** `GET /api/v1/whoami` (`WhoAmI`): who is signed in and what the role may do. */
export interface WhoAmI {
  name: string;
  role: 'operator' | 'engineer' | 'mes-client' | 'admin';
  may: Permission[];
}

/** One class of the station's defect taxonomy (`DefectClass`). */
export interface DefectClass {
  name: string;
  /** `#rrggbb`. */
  colour: string;
  severity: 'critical' | 'major' | 'minor';
  /** Whether the gate rejects a part the model gives this class. */
  rejects: boolean;
  description: string;
}

/** `GET /api/v1/defect-classes` (`DefectClasses`). */
export interface DefectClasses {
  classes: DefectClass[];
}

/** The reason an error answer gives (the `Error` schema's `error`), if it gives one. */
export function errorOf(body: unknown): string | undefined {
  if (typeof body !== 'object' || body === null || !('error' in body)) return undefined;
  return typeof body.error === 'string' ? body.error : undefined;
}

/** Shows the navigation links to the labelling and models pages to roles that may use them
 * (each page checks the role again). */
export function showLinksForRole(): void {
  fetch('/api/v1/whoami', { credentials: 'same-origin', cache: 'no-store' })
    .then((r) => (r.ok ? r.json() : null))
    .then((who: WhoAmI | null) => {
      const label = document.getElementById('nav-label');
      const models = document.getElementById('nav-models');
      if (label && who?.may.includes('label')) label.hidden = false;
      if (models && who?.may.includes('change_models')) models.hidden = false;
    })
    .catch(() => {});
}
